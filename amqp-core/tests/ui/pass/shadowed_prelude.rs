// The expansion uses absolute paths only: it compiles when the module shadows `Result`, `Option`,
// `Box` (and other prelude names), with every key given and extractors taken by pattern.
#![allow(dead_code)]

use amqp_core::{rabbit_listener, Acker, ListenerError, Metadata, State, Template};

type Result<T> = ::core::result::Result<T, ListenerError>;
struct Option;
struct Box;
struct Some;
struct None;
struct Ok;
struct Err;
struct Vec;
struct String;
trait Send {}
trait Sync {}
trait Future {}

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(serde::Serialize)]
struct Receipt {
    id: u64,
}

struct Db;

#[rabbit_listener(
    queue = "orders",
    exchange = "orders",
    exchange_type = "topic",
    key = ["order.created", "order.paid"],
    durable = true,
    exclusive = false,
    auto_delete = false,
    dead_letter_exchange = "orders.dlx",
    dead_letter_routing_key = "failed",
    message_ttl = 60000,
    max_length = 10000,
    arguments("x-overflow" = "reject-publish", "x-n" = -1, "x-flag" = true),
    prefetch = 10,
    concurrency = 2,
    ack = "auto",
    id = "orders",
    idempotent,
    rate = "200/s",
    circuit_breaker(failure_percent = 50, min_calls = 10, window = "10s", cool_down = "500ms"),
    retry(max_attempts = 5, initial = "100ms", multiplier = 2.0, max = "10s")
)]
async fn on_order(meta: Metadata, State(_db): State<Db>, _t: Template, order: Order) -> Result<Receipt> {
    let _ = meta.routing_key;
    ::core::result::Result::Ok(Receipt { id: order.id })
}

#[rabbit_listener(queue = "audit", exchange = "events", exchange_type = "headers", headers(kind = "audit", "region" = "eu"), x_match = "any", ack = "manual", quorum)]
async fn on_audit(acker: Acker, order: Order) -> Result<()> {
    let _ = order.id;
    acker.ack().await?;
    ::core::result::Result::Ok(())
}

#[rabbit_listener(queue = "accounts", exchange = "accounts", key = "account.*", partitions = 4, concurrency = 1, prefetch = 1)]
async fn on_account(order: Order) {
    let _ = order.id;
}

#[rabbit_listener(queue = "plain")]
async fn plain(order: Order) {
    let _ = order.id;
}

fn main() {}
