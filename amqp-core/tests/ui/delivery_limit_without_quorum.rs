// `delivery_limit` is a quorum queue's setting: on a classic queue it would be silently ignored.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", delivery_limit = 5)]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
