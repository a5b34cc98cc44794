// A quorum queue is durable and neither exclusive nor auto-delete.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", quorum, durable = false, auto_delete = true)]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
