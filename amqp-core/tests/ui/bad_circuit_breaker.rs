// `circuit_breaker(...)` settings: known names, a percentage, durations with units.
use amqp_core::rabbit_listener;

#[rabbit_listener(
    queue = "payments",
    circuit_breaker(failure_percent = 150, window = 10, cool_down = "30 seconds", threshold = 5)
)]
async fn on_payment(payment: String) {
    let _ = payment;
}

#[rabbit_listener(queue = "refunds", circuit_breaker = 50)]
async fn on_refund(refund: String) {
    let _ = refund;
}

fn main() {}
