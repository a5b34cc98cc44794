// An open breaker cancels the consumers, which would delete an auto-delete queue.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "payments", auto_delete = true, circuit_breaker(min_calls = 5))]
async fn on_payment(payment: String) {
    let _ = payment;
}

fn main() {}
