// A value of the wrong type is reported at the value, with an example of the right one.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", prefetch = "x", durable = "yes")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
