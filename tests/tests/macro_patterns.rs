//! The reliability keys of `#[rabbit_listener]` end to end: `idempotent` (through the app's
//! idempotency store), `rate = "..."` and `circuit_breaker(...)`. Names are fixed (under
//! `macro.patterns.`); each test runs only its own listener and deletes its queue before and after.

mod common;

use std::time::{Duration, Instant};

use amqp_core::idempotent::{Idempotency, MemoryStore};
use amqp_core::testing::TestApp;
use amqp_core::types::BasicProperties;
use amqp_core::{App, ListenerError, Message, rabbit_listener};
use common::within;
use lapin::options::QueueDeleteOptions;
use tests::{TestBroker, conformance};

#[rabbit_listener(
    queue = "macro.patterns.idempotent",
    durable = false,
    auto_delete = true,
    idempotent
)]
async fn apply_withdrawal(amount: u64) -> Result<(), ListenerError> {
    let _ = amount;
    Ok(())
}

#[rabbit_listener(
    queue = "macro.patterns.rate",
    durable = false,
    auto_delete = true,
    rate = "100/s",
    concurrency = 3
)]
async fn rated(n: u32) {
    let _ = n;
}

// Not auto-delete: pausing cancels the consumers, which would delete such a queue (the macro
// refuses the combination).
#[rabbit_listener(
    queue = "macro.patterns.breaker",
    durable = false,
    prefetch = 1,
    circuit_breaker(failure_percent = 50, min_calls = 3, window = "10s", cool_down = "1s")
)]
async fn breaking(n: u32) -> Result<(), ListenerError> {
    // The first three fail (the dependency is down), the rest succeed.
    if n < 3 {
        return Err(ListenerError::reject(format!("down ({n})")));
    }
    Ok(())
}

async fn delete(b: &TestBroker, queue: &str) {
    let (_c, ch) = common::open(b).await;
    within(
        "queue.delete",
        ch.queue_delete(queue.into(), QueueDeleteOptions::default()),
    )
    .await
    .ok();
}

async fn start(b: &TestBroker, listener: &str, app: App) -> TestApp {
    within(
        "the app to start",
        TestApp::start_with(app.url(b.url()).listeners([listener])),
    )
    .await
    .expect("start")
}

async fn idempotent_key(b: TestBroker) {
    let q = "macro.patterns.idempotent";
    delete(&b, q).await;
    let app = start(
        &b,
        "apply_withdrawal",
        App::new().idempotency(Idempotency::new(MemoryStore::new())),
    )
    .await;
    let message = Message::new(b"100".to_vec()).with_properties(
        BasicProperties::default()
            .with_message_id("withdrawal-1".into())
            .with_content_type("application/json".into()),
    );
    for _ in 0..3 {
        app.template()
            .send("", q, message.clone())
            .await
            .expect("send");
    }
    app.template()
        .convert_and_send("", q, &5u64)
        .await
        .expect("send");
    app.calls("apply_withdrawal", 2, common::WAIT)
        .await
        .expect("calls");
    tokio::time::sleep(common::QUIET).await;
    let calls = app
        .calls("apply_withdrawal", 0, common::WAIT)
        .await
        .expect("calls");
    assert_eq!(
        calls.len(),
        2,
        "withdrawal-1 applied once, the other message once"
    );
    assert_eq!(common::ready(&b, q).await, 0);
    app.shutdown().await;
    delete(&b, q).await;
}

async fn rate_key(b: TestBroker) {
    let q = "macro.patterns.rate";
    delete(&b, q).await;
    let app = start(&b, "rated", App::new()).await;
    let started = Instant::now();
    for n in 0..40u32 {
        app.template()
            .convert_and_send("", q, &n)
            .await
            .expect("send");
    }
    app.calls("rated", 40, Duration::from_secs(5))
        .await
        .expect("calls");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "40 messages at 100/s in {took:?}"
    );
    app.shutdown().await;
    delete(&b, q).await;
}

async fn circuit_breaker_key(b: TestBroker) {
    let q = "macro.patterns.breaker";
    delete(&b, q).await;
    let app = start(&b, "breaking", App::new()).await;
    for n in 0..8u32 {
        app.template()
            .convert_and_send("", q, &n)
            .await
            .expect("send");
    }
    app.calls("breaking", 3, common::WAIT).await.expect("calls");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = app
        .calls("breaking", 0, common::WAIT)
        .await
        .expect("calls")
        .len();
    assert_eq!(
        during, 3,
        "open after 3 failures: nothing consumed in the cool-down"
    );
    assert_eq!(common::ready(&b, q).await, 5);
    app.calls("breaking", 8, Duration::from_secs(5))
        .await
        .expect("resumed after the cool-down");
    app.shutdown().await;
    delete(&b, q).await;
}

conformance!(idempotent_key, rate_key, circuit_breaker_key);
