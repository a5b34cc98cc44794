//! Helpers shared by the conformance test files (each file includes this with `mod common;`).
//!
//! Every wait is bounded by [`WAIT`], so a broker that never answers fails the test quickly
//! instead of hanging it.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer, ErrorKind, Event};

/// How long any single step may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long to wait to be reasonably sure that something does *not* happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// AMQP reply codes used by the tests.
pub mod code {
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const NOT_ALLOWED: u16 = 530;
    pub const COMMAND_INVALID: u16 = 503;
    pub const NOT_IMPLEMENTED: u16 = 540;
}

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Asserts that `result` failed with the AMQP reply code `expected`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: lapin::Result<T>, expected: u16) {
    match result {
        Ok(v) => panic!("expected AMQP error {expected}, got Ok({v:?})"),
        Err(e) => assert_eq!(
            reply_code(&e),
            Some(expected),
            "expected AMQP error {expected}, got {e}"
        ),
    }
}

/// Watches a connection for the error events lapin emits when the server closes a channel or the
/// connection. Create it *before* doing the thing that should fail.
pub struct Errors(futures::stream::BoxStream<'static, Event>);

impl std::fmt::Debug for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Errors")
    }
}

impl Errors {
    pub fn watch(conn: &Connection) -> Self {
        Self(conn.events_listener().boxed())
    }

    /// The reply code of the next channel or connection error on this connection.
    pub async fn next_code(&mut self) -> u16 {
        within("a channel/connection error", async {
            loop {
                match self.0.next().await {
                    Some(Event::Error(e)) => {
                        return reply_code(&e).unwrap_or_else(|| panic!("non-AMQP error: {e}"));
                    }
                    Some(_) => continue,
                    None => panic!("event stream ended without an error"),
                }
            }
        })
        .await
    }
}

/// Opens a connection and one channel on it.
pub async fn open(b: &tests::TestBroker) -> (Connection, Channel) {
    let conn = within("connect", b.connect()).await;
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    (conn, ch)
}

/// How many messages are ready in `queue` (a passive declare on a connection of its own).
pub async fn ready(b: &tests::TestBroker, queue: &str) -> u32 {
    let (_conn, ch) = open(b).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(
        "passive queue.declare",
        ch.queue_declare(queue.into(), passive, FieldTable::default()),
    )
    .await
    .expect("the queue exists")
    .message_count()
}

/// Declares an exclusive queue with a unique name (so it goes away with its connection) and
/// returns its name.
pub async fn fresh_queue(ch: &Channel, prefix: &str) -> String {
    declare_queue(
        ch,
        prefix,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await
}

/// Declares a plain (non-exclusive, non-durable) queue with a unique name, for tests that use it
/// from several connections. Delete it at the end of the test.
pub async fn shared_queue(ch: &Channel, prefix: &str) -> String {
    declare_queue(ch, prefix, QueueDeclareOptions::default()).await
}

/// Declares a queue with a unique name and the given options and returns its name.
pub async fn declare_queue(ch: &Channel, prefix: &str, options: QueueDeclareOptions) -> String {
    let name = tests::unique(prefix);
    within(
        "queue.declare",
        ch.queue_declare(name.as_str().into(), options, FieldTable::default()),
    )
    .await
    .expect("queue.declare");
    name
}

/// Deletes a queue (end-of-test cleanup).
pub async fn delete_queue(ch: &Channel, queue: &str) {
    within(
        "queue.delete",
        ch.queue_delete(queue.into(), Default::default()),
    )
    .await
    .expect("queue.delete");
}

/// Publishes `body` (no confirm wait) with default properties.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, BasicProperties::default()).await;
}

/// Publishes `body` with `props` (no confirm wait).
pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
}

/// `basic.get` with manual ack; `None` on get-empty.
pub async fn get(ch: &Channel, queue: &str) -> Option<Delivery> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get")
    .map(|m| m.delivery)
}

/// `basic.get` with no-ack, returning the body; `None` on get-empty.
pub async fn get_body(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    .map(|m| m.delivery.data)
}

/// Polls `basic.get` (no-ack) until a message arrives, for routing checks where delivery to the
/// queue is asynchronous to the publish.
pub async fn get_eventually(ch: &Channel, queue: &str) -> Vec<u8> {
    within("a message in the queue", async {
        loop {
            if let Some(body) = get_body(ch, queue).await {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Polls `basic.get` (manual ack) until a message arrives and returns the delivery.
pub async fn get_eventually_delivery(ch: &Channel, queue: &str) -> Delivery {
    within("a message in the queue", async {
        loop {
            if let Some(d) = get(ch, queue).await {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Drains a queue with no-ack `basic.get`s after making sure earlier publishes on `ch` were
/// processed (a round trip on the same channel orders after them), returning the bodies.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(body) = get_body(ch, queue).await {
        out.push(body);
    }
    out
}

/// Starts a consumer with the given tag (empty for server-generated) and options.
pub async fn consume(
    ch: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> Consumer {
    within(
        "basic.consume",
        ch.basic_consume(queue.into(), tag.into(), options, FieldTable::default()),
    )
    .await
    .expect("basic.consume")
}

/// The next delivery on `consumer`.
pub async fn next(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Asserts that `consumer` gets nothing for [`QUIET`].
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!(
                "unexpected delivery: {:?}",
                String::from_utf8_lossy(&d.data)
            ),
            Some(Err(e)) => panic!("unexpected consumer error: {e}"),
            None => panic!("consumer stream ended unexpectedly"),
        }
    }
}

/// Whether a queue exists, checked with a passive declare on a throwaway channel.
pub async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    let res = within(
        "passive queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match res {
        Ok(_) => {
            let _ = ch.close(200, "done".into()).await;
            true
        }
        Err(e) if reply_code(&e) == Some(code::NOT_FOUND) => false,
        Err(e) => panic!("passive declare of {queue}: {e}"),
    }
}

/// Waits until `queue` no longer exists (deletion may be asynchronous to what caused it).
pub async fn wait_queue_gone(conn: &Connection, queue: &str) {
    within("the queue to be deleted", async {
        while queue_exists(conn, queue).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
