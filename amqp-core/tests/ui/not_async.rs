// A listener must be an `async fn`: the error points at `fn` and says to write `async fn`.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders")]
fn on_order(order: String) {
    let _ = order;
}

fn main() {}
