// An idempotent listener requeues a message another consumer is handling: it needs acks.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "withdrawals", idempotent, ack = "none")]
async fn on_withdrawal(amount: u64) {
    let _ = amount;
}

fn main() {}
