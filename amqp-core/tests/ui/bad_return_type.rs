// A listener returns `()` or `Result<R, E>`; anything else is reported at the return type.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders")]
async fn on_order(order: String) -> u32 {
    order.len() as u32
}

fn main() {}
