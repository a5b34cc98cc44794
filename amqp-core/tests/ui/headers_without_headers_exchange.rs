// `headers(...)` and `x_match` are binding arguments of a headers exchange only.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "audit", exchange = "events", headers(kind = "audit"), x_match = "any")]
async fn on_audit(event: String) {
    let _ = event;
}

fn main() {}
