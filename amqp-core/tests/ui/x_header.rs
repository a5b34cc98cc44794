// A headers exchange ignores binding headers named `x-...` unless x_match is "all-with-x" or
// "any-with-x": such a header is reported, with both ways out.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "audit", exchange = "events", exchange_type = "headers", headers("x-region" = "eu"))]
async fn on_audit(event: String) {
    let _ = event;
}

fn main() {}
