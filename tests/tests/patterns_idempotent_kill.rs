//! Idempotent consumers across a real crash: a consumer process (`src/bin/idempotent_consumer.rs`,
//! records in the real Redis at `REDIS_URL`, default `redis://127.0.0.1:6379`) is killed with
//! SIGKILL at the two points that matter, and the side effect (an `INCR` in Redis, which outlives
//! the process) is counted.
//!
//! What the lease guarantees, and so what these tests assert:
//! - Killed after "done" but before the ack: the broker redelivers, the next consumer finds
//!   "done" and acks without running. With the same message id also published 3 times, the side
//!   effect happens exactly once.
//! - Killed after the side effect but before "done": the record is "processing" with a lease.
//!   Nobody runs the message while the lease lives; once it lapses, the redelivery runs again. So
//!   the side effect happens twice: the store cannot know whether a dead consumer's side effect
//!   happened, and it chooses at least once over a lost message. (A side effect that must not
//!   repeat even then belongs in the same transaction as its own dedupe record, e.g. a database
//!   unique constraint.) Copies arriving after that are acked without running.

mod common;

use std::time::{Duration, Instant};

use amqp_core::types::BasicProperties;
use amqp_core::{Connection, ConnectionFactory, Message, Template};
use common::within;
use redis::AsyncCommands;
use tests::process::{Process, drain};
use tests::{TestBroker, conformance, unique};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

type Lines = UnboundedReceiver<(&'static str, String)>;

fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL parses");
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis at {url} did not answer in 5 s"))
    .unwrap_or_else(|e| panic!("Redis at {url}: {e}"))
}

async fn effects(redis: &mut redis::aio::MultiplexedConnection, prefix: &str, id: &str) -> i64 {
    let count: Option<i64> = redis.get(format!("{prefix}:{id}")).await.expect("GET");
    count.unwrap_or(0)
}

/// A consumer process in `mode` (see the binary), once it is subscribed.
async fn consumer(
    name: &'static str,
    b: &TestBroker,
    queue: &str,
    prefix: &str,
    lease_ms: u64,
    mode: &str,
) -> (Process, Lines) {
    let (tx, mut lines) = unbounded_channel();
    let lease = lease_ms.to_string();
    let redis_url = redis_url();
    let args = [b.url(), queue, &redis_url, prefix, &lease, mode];
    let process = Process::spawn(
        name,
        env!("CARGO_BIN_EXE_idempotent_consumer"),
        &args,
        &[],
        tx,
    );
    let first = tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .expect("the consumer process starts within 30 s");
    assert_eq!(first, Some((name, "ready".to_owned())));
    (process, lines)
}

/// The next line, which must be `effect <id> <count>`; returns the count.
async fn next_effect(lines: &mut Lines, id: &str) -> i64 {
    let line = tokio::time::timeout(Duration::from_secs(15), lines.recv())
        .await
        .unwrap_or_else(|_| panic!("no side effect of {id} within 15 s"))
        .expect("the process is running");
    let count = line
        .1
        .strip_prefix(&format!("effect {id} "))
        .unwrap_or_else(|| panic!("expected the side effect of {id}, got {line:?}"));
    count.parse().expect("a count")
}

fn message(id: &str) -> Message {
    Message::new(serde_json::to_vec(id).expect("json")).with_properties(
        BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into()),
    )
}

async fn connect(b: &TestBroker) -> Connection {
    ConnectionFactory::new(b.url())
        .connection_name(unique("patterns.idem.kill"))
        .connect()
        .await
        .expect("connect")
}

/// Stops a consumer gracefully and checks that it had no more side effects to report.
async fn stop(mut process: Process, mut lines: Lines) {
    let status = process.terminate().await;
    assert!(
        status.success(),
        "{} exits cleanly: {status}",
        process.name()
    );
    let rest: Vec<String> = drain(&mut lines)
        .await
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(rest, ["stopped"], "{} did nothing more", process.name());
}

/// The acceptance case: one message id delivered 3 times, and once more after the consumer
/// that handled it is killed between "done" and its ack: one side effect.
async fn killed_after_done_the_redelivery_is_acked_unread(b: TestBroker) {
    let queue = unique("patterns.idem.kill");
    let prefix = unique("patterns.idem.effects");
    let mut redis = redis().await;
    let (mut first, mut first_lines) =
        consumer("first", &b, &queue, &prefix, 30_000, "no-ack").await;
    let conn = connect(&b).await;
    let template = Template::new(conn.clone());
    for _ in 0..3 {
        template
            .send("", &queue, message("w-1"))
            .await
            .expect("send");
    }
    assert_eq!(next_effect(&mut first_lines, "w-1").await, 1);
    let record = amqp_core::idempotent::key(&queue, "w-1");
    within("the record to be done", async {
        loop {
            let state: Option<String> = redis.get(&record).await.expect("GET");
            if state.as_deref() == Some("done") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Give the two duplicates time to be acked unread (they are, whether or not they were yet).
    tokio::time::sleep(common::QUIET).await;
    first.kill().await;

    let (second, mut second_lines) =
        consumer("second", &b, &queue, &prefix, 30_000, "normal").await;
    template
        .send("", &queue, message("w-2"))
        .await
        .expect("send");
    assert_eq!(
        next_effect(&mut second_lines, "w-2").await,
        1,
        "the second consumer ran the new message, not w-1 before it"
    );
    stop(second, second_lines).await;
    assert_eq!(effects(&mut redis, &prefix, "w-1").await, 1, "w-1 ran once");
    // The killed consumer never acked w-1; an empty queue means its redelivery was acked, and by
    // the second consumer, which did not run it.
    assert_eq!(
        common::ready(&b, &queue).await,
        0,
        "every copy of w-1 was acknowledged"
    );
    conn.close().await;
}

/// Killed after the side effect, before "done": the redelivery waits out the lease, then runs
/// again (the second side effect), and later copies are acked without running.
async fn killed_before_done_the_redelivery_runs_after_the_lease(b: TestBroker) {
    let queue = unique("patterns.idem.kill");
    let prefix = unique("patterns.idem.effects");
    let lease = Duration::from_millis(2_000);
    let lease_ms = lease.as_millis() as u64;
    let mut redis = redis().await;
    let (mut first, mut first_lines) =
        consumer("first", &b, &queue, &prefix, lease_ms, "hang").await;
    let conn = connect(&b).await;
    let template = Template::new(conn.clone());
    template
        .send("", &queue, message("w-1"))
        .await
        .expect("send");
    assert_eq!(next_effect(&mut first_lines, "w-1").await, 1);
    // The claim was made just before the side effect: the lease ends about `lease` from here.
    let claimed_by = Instant::now();
    first.kill().await;

    let (second, mut second_lines) =
        consumer("second", &b, &queue, &prefix, lease_ms, "normal").await;
    assert_eq!(
        next_effect(&mut second_lines, "w-1").await,
        2,
        "the redelivery ran again"
    );
    let waited = claimed_by.elapsed();
    assert!(
        waited >= lease - Duration::from_millis(200),
        "it ran {waited:?} after the first claim, inside the {lease:?} lease"
    );
    for _ in 0..2 {
        template
            .send("", &queue, message("w-1"))
            .await
            .expect("send");
    }
    template
        .send("", &queue, message("w-2"))
        .await
        .expect("send");
    assert_eq!(
        next_effect(&mut second_lines, "w-2").await,
        1,
        "the copies of w-1 were acked without running"
    );
    stop(second, second_lines).await;
    assert_eq!(effects(&mut redis, &prefix, "w-1").await, 2);
    assert_eq!(
        common::ready(&b, &queue).await,
        0,
        "every copy was acknowledged"
    );
    conn.close().await;
}

conformance!(
    killed_after_done_the_redelivery_is_acked_unread,
    killed_before_done_the_redelivery_runs_after_the_lease,
);
