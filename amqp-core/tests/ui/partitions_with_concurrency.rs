// A partition has a single active consumer: `concurrency` above 1 would only add idle ones.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "accounts", partitions = 4, concurrency = 2)]
async fn on_account(event: String) {
    let _ = event;
}

fn main() {}
