// A listener is a free function: `self` is reported, with what to do instead.
use amqp_core::rabbit_listener;

struct Service;

impl Service {
    #[rabbit_listener(queue = "orders")]
    async fn on_order(&self, order: String) {
        let _ = order;
    }
}

fn main() {}
