// `queue` is required: the error is at the attribute and shows how to write it.
use amqp_core::rabbit_listener;

#[rabbit_listener(exchange = "orders")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
