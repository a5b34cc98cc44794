// `partitions` is from 1 to 1024: zero partitions could take no message.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "accounts", partitions = 0)]
async fn on_account(event: String) {
    let _ = event;
}

#[rabbit_listener(queue = "ledger", partitions = 5000)]
async fn on_ledger(event: String) {
    let _ = event;
}

fn main() {}
