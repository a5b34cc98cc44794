// `retry(...)` settings: known names, attempts of at least 1, a multiplier of at least 1.0,
// durations with units, an initial delay no longer than the max, and a table, not a value.
use amqp_core::rabbit_listener;

#[rabbit_listener(
    queue = "payments",
    retry(max_attempts = 0, initial = "100 millis", multiplier = 0.5, max = 10, backoff = "exp")
)]
async fn on_payment(payment: String) {
    let _ = payment;
}

#[rabbit_listener(queue = "refunds", retry(initial = "20s", max = "10s"))]
async fn on_refund(refund: String) {
    let _ = refund;
}

#[rabbit_listener(queue = "invoices", retry = 5)]
async fn on_invoice(invoice: String) {
    let _ = invoice;
}

fn main() {}
