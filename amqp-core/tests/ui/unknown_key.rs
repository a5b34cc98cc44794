// An unknown key is reported at that key, with a suggestion and the list of keys.
use amqp_core::rabbit_listener;

#[rabbit_listener(quue = "orders")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
