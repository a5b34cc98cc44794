//! Idempotent consumers: one `message_id` delivered several times (duplicate publishes, a
//! redelivery after the consumer handled it but never acked, a lease left by a consumer that died)
//! causes its side effect exactly once; with the in-memory store and with Redis.
//!
//! Redis is at `REDIS_URL` (default `redis://127.0.0.1:6379`, which this machine and CI run); a
//! Redis that does not answer fails the Redis tests rather than skipping them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_core::idempotent::{self, Claim, Idempotency, IdempotencyStore, MemoryStore, RedisStore};
use amqp_core::types::BasicProperties;
use amqp_core::{
    AckMode, Connection, ConnectionFactory, Listener, ListenerError, Message, Metadata, Template,
};
use common::within;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use parking_lot::Mutex;
use tests::{TestBroker, conformance, unique};

/// Side effects per message id.
type Effects = Arc<Mutex<HashMap<String, usize>>>;

async fn connect(b: &TestBroker) -> Connection {
    let factory = ConnectionFactory::new(b.url()).connection_name(unique("patterns.idem"));
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

fn memory() -> Arc<dyn IdempotencyStore> {
    Arc::new(MemoryStore::new())
}

async fn redis() -> Arc<dyn IdempotencyStore> {
    let url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let store = tokio::time::timeout(Duration::from_secs(5), RedisStore::connect(&url))
        .await
        .unwrap_or_else(|_| panic!("Redis at {url} did not answer in 5 s"))
        .unwrap_or_else(|e| panic!("Redis at {url}: {e} (set REDIS_URL to another Redis)"));
    Arc::new(store)
}

/// Messages in a queue, ready or not (passive declare on a raw channel, after consumers left).
async fn count(b: &TestBroker, q: &str) -> u32 {
    let (_c, ch) = common::open(b).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(
        "passive",
        ch.queue_declare(q.into(), passive, FieldTable::default()),
    )
    .await
    .expect("passive declare")
    .message_count()
}

fn message(id: &str) -> Message {
    Message::new(serde_json::to_vec(id).expect("json")).with_properties(
        BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into()),
    )
}

async fn wait_for(effects: &Effects, id: &str, n: usize) {
    within(&format!("{n} side effect(s) of {id}"), async {
        while effects.lock().get(id).copied().unwrap_or(0) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn recording(
    effects: &Effects,
) -> impl Fn(String, Metadata) -> futures::future::Ready<Result<(), ListenerError>> + Send + Sync + 'static
{
    let effects = effects.clone();
    move |id: String, _meta: Metadata| {
        *effects.lock().entry(id).or_default() += 1;
        futures::future::ready(Ok(()))
    }
}

/// The same message_id handled, then redelivered unacked, then published twice more: one side
/// effect, every copy acknowledged (none dead-lettered, none left in the queue).
async fn exactly_once(b: TestBroker, store: Arc<dyn IdempotencyStore>) {
    let conn = connect(&b).await;
    let (q, dlq) = tests::work_queue_with_dlq(&conn, "patterns.idem").await;
    let template = Template::new(conn.clone());
    let effects: Effects = Arc::default();

    // A consumer that applies the side effect and dies before its ack: manual ack mode whose
    // handler never acks, stopped afterwards, so the broker redelivers the message.
    let crashing = Listener::on(&q)
        .ack_mode(AckMode::Manual)
        .idempotent(Idempotency::shared(store.clone()))
        .handler_with_metadata(recording(&effects))
        .start(&conn)
        .await
        .expect("start the first consumer");
    template.send("", &q, message("w-1")).await.expect("send");
    wait_for(&effects, "w-1", 1).await;
    crashing.shutdown().await;

    // Two duplicate publishes after the redelivery, then a sentinel behind them.
    template.send("", &q, message("w-1")).await.expect("send");
    template.send("", &q, message("w-1")).await.expect("send");
    template.send("", &q, message("w-2")).await.expect("send");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_second = seen.clone();
    let record = recording(&effects);
    let second = Listener::on(&q)
        .prefetch(1)
        .idempotent(Idempotency::shared(store.clone()))
        .handler_with_metadata(move |id: String, meta: Metadata| {
            seen_by_second.lock().push((id.clone(), meta.redelivered));
            record(id, meta)
        })
        .start(&conn)
        .await
        .expect("start the second consumer");
    wait_for(&effects, "w-2", 1).await;
    tokio::time::sleep(common::QUIET).await;
    second.shutdown().await;

    let effects = effects.lock().clone();
    assert_eq!(
        effects.get("w-1"),
        Some(&1),
        "w-1's side effect happened once: {effects:?}"
    );
    assert_eq!(effects.get("w-2"), Some(&1));
    assert_eq!(
        *seen.lock(),
        vec![("w-2".to_owned(), false)],
        "the second consumer ran only the new message"
    );
    assert_eq!(count(&b, &q).await, 0, "every copy of w-1 was acknowledged");
    assert_eq!(count(&b, &dlq).await, 0, "no copy was rejected");
    conn.close().await;
}

/// A consumer that died after its side effect but before "done" left a lease: the message is not
/// run while the lease lives, and runs once after it lapsed; later copies are acked unread.
async fn a_lapsed_lease_runs_again_once(b: TestBroker, store: Arc<dyn IdempotencyStore>) {
    let conn = connect(&b).await;
    let (q, dlq) = tests::work_queue_with_dlq(&conn, "patterns.idem").await;
    let lease = Duration::from_millis(1500);
    let claimed = store
        .begin(&idempotent::key(&q, "w-1"), lease)
        .await
        .expect("store");
    assert!(matches!(claimed, Claim::Acquired(_)), "{claimed:?}");
    let claimed_at = Instant::now();

    let effects: Effects = Arc::default();
    let first_run = Arc::new(Mutex::new(None));
    let first = first_run.clone();
    let record = recording(&effects);
    let listener = Listener::on(&q)
        .concurrency(2)
        .idempotent(Idempotency::shared(store.clone()).lease(Duration::from_secs(5)))
        .handler_with_metadata(move |id: String, meta: Metadata| {
            first.lock().get_or_insert_with(Instant::now);
            record(id, meta)
        })
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    template.send("", &q, message("w-1")).await.expect("send");
    wait_for(&effects, "w-1", 1).await;
    let ran_after = first_run.lock().expect("ran").duration_since(claimed_at);
    assert!(
        ran_after >= lease - Duration::from_millis(100),
        "ran {ran_after:?} after the claim, inside the {lease:?} lease"
    );
    template.send("", &q, message("w-1")).await.expect("send");
    template.send("", &q, message("w-1")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    listener.shutdown().await;
    assert_eq!(effects.lock().get("w-1"), Some(&1));
    assert_eq!(count(&b, &q).await, 0);
    assert_eq!(count(&b, &dlq).await, 0);
    conn.close().await;
}

/// Two consumers on two connections share the store: a message published many times while the
/// handler is slow runs once, never twice at the same time.
async fn concurrent_duplicates_run_once(b: TestBroker, store: Arc<dyn IdempotencyStore>) {
    let conn_a = connect(&b).await;
    let conn_b = connect(&b).await;
    let (q, dlq) = tests::work_queue_with_dlq(&conn_a, "patterns.idem").await;
    let effects: Effects = Arc::default();
    let mut listeners = Vec::new();
    for conn in [&conn_a, &conn_b] {
        let effects = effects.clone();
        listeners.push(
            Listener::on(&q)
                .prefetch(5)
                .concurrency(2)
                .idempotent(Idempotency::shared(store.clone()))
                .handler(move |id: String| {
                    let effects = effects.clone();
                    async move {
                        *effects.lock().entry(id).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, ListenerError>(())
                    }
                })
                .start(conn)
                .await
                .expect("start"),
        );
    }
    let template = Template::new(conn_a.clone());
    for _ in 0..6 {
        template.send("", &q, message("w-1")).await.expect("send");
    }
    template.send("", &q, message("w-2")).await.expect("send");
    wait_for(&effects, "w-2", 1).await;
    within("the queue to drain", async {
        while count(&b, &q).await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for l in listeners {
        l.shutdown().await;
    }
    assert_eq!(effects.lock().get("w-1"), Some(&1), "{:?}", effects.lock());
    assert_eq!(count(&b, &q).await, 0);
    assert_eq!(count(&b, &dlq).await, 0);
    conn_a.close().await;
    conn_b.close().await;
}

async fn exactly_once_in_memory(b: TestBroker) {
    exactly_once(b, memory()).await;
}

async fn exactly_once_in_redis(b: TestBroker) {
    exactly_once(b, redis().await).await;
}

async fn a_lapsed_lease_runs_again_once_in_memory(b: TestBroker) {
    a_lapsed_lease_runs_again_once(b, memory()).await;
}

async fn a_lapsed_lease_runs_again_once_in_redis(b: TestBroker) {
    a_lapsed_lease_runs_again_once(b, redis().await).await;
}

async fn concurrent_duplicates_run_once_in_memory(b: TestBroker) {
    concurrent_duplicates_run_once(b, memory()).await;
}

async fn concurrent_duplicates_run_once_in_redis(b: TestBroker) {
    concurrent_duplicates_run_once(b, redis().await).await;
}

conformance!(
    exactly_once_in_memory,
    exactly_once_in_redis,
    a_lapsed_lease_runs_again_once_in_memory,
    a_lapsed_lease_runs_again_once_in_redis,
    concurrent_duplicates_run_once_in_memory,
    concurrent_duplicates_run_once_in_redis,
);
