// `retry(...)` acks after re-publishing a failed message, so it needs automatic acks.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "payments", ack = "manual", retry(max_attempts = 3))]
async fn on_payment(payment: String) {
    let _ = payment;
}

fn main() {}
