//! Flow control on the bundled broker: once the message bodies it holds reach the memory
//! high-water mark, publishing connections are blocked (`connection.blocked`, reason "low on
//! memory", to clients that ask for it; their socket is no longer read in any case) while
//! consumers on other connections drain the queues; then `connection.unblocked`, and nothing
//! published is lost.
//!
//! Bundled only: making RabbitMQ raise its memory alarm takes `rabbitmqctl
//! set_vm_memory_high_watermark`, which would block every other test sharing that RabbitMQ.

mod common;

use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties as RawProperties, basic, connection};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, Event};
use tests::raw::{self, RawClient, Read};
use tests::unique;

/// The high-water mark in these tests.
const WATERMARK_BYTES: u64 = 64 * 1024;
/// Each message's body.
const BODY_BYTES: usize = 1024;
/// What the broker may hold beyond the mark: what it had read from a publisher's socket before
/// it noticed (one read buffer) and frames in flight.
const SLACK_BYTES: u64 = 256 * 1024;

async fn broker() -> amqp_broker::Broker {
    amqp_broker::Broker::builder()
        .port(0)
        .memory_high_watermark_bytes(WATERMARK_BYTES)
        .start()
        .await
        .expect("broker starts")
}

async fn connect(broker: &amqp_broker::Broker) -> Connection {
    Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

/// A body that says which message it is.
fn body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:08}").into_bytes();
    b.resize(BODY_BYTES, b'.');
    b
}

fn index(body: &[u8]) -> usize {
    std::str::from_utf8(&body[..8]).unwrap().parse().unwrap()
}

/// Consumes `n` messages from `queue` on its own connection, acking them (50 at a time); returns
/// their indexes.
async fn consume_all(broker: &amqp_broker::Broker, queue: &str, n: usize) -> Vec<usize> {
    let conn = connect(broker).await;
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", got.len()))
            .unwrap()
            .unwrap();
        got.push(index(&d.data));
        if got.len() % 50 == 0 || got.len() == n {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    got
}

/// Waits until the broker holds at most `bytes` of bodies.
async fn memory_falls_to(broker: &amqp_broker::Broker, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.memory_used_bytes() > bytes {
        assert!(
            Instant::now() < deadline,
            "the broker still holds {} bytes",
            broker.memory_used_bytes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_is_blocked_at_the_watermark_and_unblocked_once_a_consumer_drains() {
    const MESSAGES: usize = 1000; // ~1 MiB: sixteen times the mark.
    let broker = broker().await;
    let publisher = connect(&broker).await;
    let mut events = publisher.events_listener();
    let ch = publisher.create_channel().await.unwrap();
    let queue = unique("flow.q");
    ch.queue_declare(
        queue.as_str().into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let publishing = tokio::spawn({
        let queue = queue.clone();
        async move {
            for i in 0..MESSAGES {
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body(i),
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            }
        }
    });

    let blocked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Some(Event::ConnectionBlocked(reason)) => return reason,
                Some(_) => {}
                None => panic!("the connection's events ended"),
            }
        }
    })
    .await
    .expect("connection.blocked within 10 s");
    assert_eq!(blocked, "low on memory");
    assert!(publisher.status().blocked());
    // Held back: the broker stops near the mark, far below what was published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = broker.memory_used_bytes();
    assert!(
        (WATERMARK_BYTES..=WATERMARK_BYTES + SLACK_BYTES).contains(&held),
        "the broker holds {held} bytes of bodies while blocked"
    );
    assert!(!publishing.is_finished(), "the publisher is held back");

    // A consumer on another connection is not blocked: it drains, and the publisher resumes.
    let got = consume_all(&broker, &queue, MESSAGES).await;
    assert_eq!(
        got,
        (0..MESSAGES).collect::<Vec<_>>(),
        "all arrive, in order"
    );
    let unblocked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.next().await {
                Some(Event::ConnectionUnblocked) => return,
                Some(_) => {}
                None => panic!("the connection's events ended"),
            }
        }
    })
    .await;
    assert!(unblocked.is_ok(), "connection.unblocked");
    assert!(!publisher.status().blocked());
    tokio::time::timeout(Duration::from_secs(5), publishing)
        .await
        .expect("the publisher finishes")
        .unwrap();
    memory_falls_to(&broker, 0).await;
    broker.shutdown().await.unwrap();
}

/// A client that did not ask for `connection.blocked` and keeps writing: the broker stops reading
/// its socket all the same, so what it holds stays near the mark; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_ignores_flow_control_is_not_read_until_the_queue_drains() {
    const MESSAGES: usize = 4000; // ~4 MiB in one write.
    let broker = broker().await;
    let queue = unique("flow.raw");
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (mut client, tune) = RawClient::handshake(&broker.local_addr().to_string()).await;
    client.open_channel(1).await;
    let mut bytes = Vec::new();
    for i in 0..MESSAGES {
        let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.as_str().into(),
            mandatory: false,
            immediate: false,
        }));
        bytes.extend(raw::encode(&AMQPFrame::Method(1, publish)));
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: BODY_BYTES as u64,
            properties: RawProperties::default(),
        };
        bytes.extend(raw::encode(&AMQPFrame::Header(1, header)));
        bytes.extend(raw::encode(&AMQPFrame::Body(1, body(i))));
    }
    assert!(tune.frame_max as usize > BODY_BYTES);
    let writing = tokio::spawn(async move {
        client.send_bytes(&bytes).await;
        client
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let held = broker.memory_used_bytes();
    assert!(
        (WATERMARK_BYTES..=WATERMARK_BYTES + SLACK_BYTES).contains(&held),
        "the broker holds {held} bytes of bodies while the publisher is blocked"
    );
    assert!(!writing.is_finished(), "the client's write is held back");

    let got = consume_all(&broker, &queue, MESSAGES).await;
    assert_eq!(
        got,
        (0..MESSAGES).collect::<Vec<_>>(),
        "all arrive, in order"
    );
    let mut client = writing.await.unwrap();
    // Not asked for, not sent.
    loop {
        match client.read_within(Duration::from_millis(300)).await {
            Read::Frame(AMQPFrame::Method(0, AMQPClass::Connection(m))) => {
                assert!(
                    !matches!(
                        m,
                        connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_)
                    ),
                    "{m:?} sent to a client without the capability"
                );
            }
            Read::Frame(_) => {}
            _ => break,
        }
    }
    drop(client);
    memory_falls_to(&broker, 0).await;
    broker.shutdown().await.unwrap();
}
