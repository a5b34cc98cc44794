// Partitions are picked by routing key, which fanout and headers exchanges ignore.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "accounts", exchange = "events", exchange_type = "fanout", partitions = 4)]
async fn on_account(event: String) {
    let _ = event;
}

fn main() {}
