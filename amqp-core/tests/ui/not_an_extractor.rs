// Every parameter before the payload must be an extractor: the trait's on_unimplemented message
// points at the parameter's type and lists the extractors.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders")]
async fn on_order(count: u32, order: String) {
    let _ = (count, order);
}

fn main() {}
