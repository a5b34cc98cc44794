// A binding `key` needs an `exchange` to bind to.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", key = ["order.created", "order.paid"])]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
