// `exchange_type` needs an `exchange` to bind to.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", exchange_type = "topic")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
