// All mistakes are reported in one compile, each at its own tokens, and the function is still
// emitted (its caller in `main` compiles).
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders", prefetch = 70000, concurrency = 0, ack = "auto", ack = "manual", colour = "blue", key = "a")]
fn on_order(order: String) {
    let _ = order;
}

fn main() {
    on_order(String::new());
}
