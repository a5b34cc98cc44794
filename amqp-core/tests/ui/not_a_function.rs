// The attribute goes on a function only.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders")]
struct Orders;

fn main() {}
