// `exchange_type` is one of the four exchange types; the error is at the value.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", exchange = "orders", exchange_type = "topics")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
