// A listener needs a payload parameter: the error is at the empty parameter list.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders")]
async fn on_order() {}

fn main() {}
