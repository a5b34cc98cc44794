// `ack` is "auto", "manual" or "none"; the error is at the value.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", ack = "always")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
