// A key given twice is reported at its second occurrence.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", prefetch = 10, queue = "orders.v2")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
