// The payload (the last parameter) must be Deserialize: the error points at its type.
use amqp_core::rabbit_listener;

struct Order;

#[rabbit_listener(queue = "orders")]
async fn on_order(order: Order) {
    let _ = order;
}

fn main() {}
