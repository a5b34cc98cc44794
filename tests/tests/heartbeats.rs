//! Half-open connections: a client that vanishes without closing its socket (no FIN, no RST) is
//! noticed by the broker through missed heartbeats, and cleaned up as if it had closed: its
//! exclusive queues deleted, its unacknowledged messages requeued for other consumers.

mod common;

use std::time::{Duration, Instant};

use common::{consume, open, publish, queue_exists, shared_queue, within};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tests::proxy::Proxy;
use tests::{TestBroker, conformance, unique};

/// How long the broker may take to notice: heartbeats are 1 s apart and the broker gives up
/// after two missed ones; the rest is slack for a loaded machine (a hang guard, not a timing
/// assertion).
const DETECTION_GUARD: Duration = Duration::from_secs(30);

async fn vanished_client_is_cleaned_up_after_missed_heartbeats(b: TestBroker) {
    let proxy = Proxy::start(&b.addr()).await;
    let url = format!("{}?heartbeat=1", b.url_via(proxy.addr()));
    let vanishing = within(
        "connect through the proxy",
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("connect through the proxy");
    let ch = within("channel.open", vanishing.create_channel())
        .await
        .expect("channel.open");
    let exclusive = unique("heartbeat.exclusive");
    within(
        "queue.declare",
        ch.queue_declare(
            exclusive.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare the exclusive queue");

    let (observer, observer_ch) = open(&b).await;
    let work = shared_queue(&observer_ch, "heartbeat.work").await;
    for body in ["one", "two", "three"] {
        publish(&observer_ch, "", &work, body.as_bytes()).await;
    }
    within("basic.qos", ch.basic_qos(10, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut held = consume(&ch, &work, "held", BasicConsumeOptions::default()).await;
    for _ in 0..3 {
        let delivery = within("a delivery", held.next())
            .await
            .expect("a delivery")
            .expect("no delivery error");
        assert!(!delivery.redelivered, "first delivery");
    }

    // The client vanishes: the proxy holds every byte both ways and closes nothing.
    proxy.freeze();
    let vanished_at = Instant::now();

    let mut other = consume(&observer_ch, &work, "other", BasicConsumeOptions::default()).await;
    let mut requeued = Vec::new();
    while requeued.len() < 3 {
        let delivery = tokio::time::timeout(DETECTION_GUARD, other.next())
            .await
            .expect("the unacked messages are requeued once the broker notices")
            .expect("consumer stream open")
            .expect("no delivery error");
        assert!(delivery.redelivered, "a requeued message is redelivered");
        requeued.push(String::from_utf8_lossy(&delivery.data).into_owned());
    }
    println!(
        "{:?}: unacked messages requeued {:.1} s after the client vanished (heartbeat 1 s)",
        b.backend(),
        vanished_at.elapsed().as_secs_f64()
    );
    assert_eq!(requeued, ["one", "two", "three"], "in their original order");

    tokio::time::timeout(DETECTION_GUARD, async {
        while queue_exists(&observer, &exclusive).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the vanished client's exclusive queue is deleted");
    if let Some(broker) = b.broker() {
        assert!(
            broker.connections().iter().all(|c| c.heartbeat_secs != 1),
            "the vanished connection is no longer listed: {:?}",
            broker.connections()
        );
    }

    within(
        "queue.delete",
        observer_ch.queue_delete(work.as_str().into(), Default::default()),
    )
    .await
    .expect("delete the work queue");
    drop(proxy);
    tests::close_quietly(&observer, "done").await;
}

conformance!(vanished_client_is_cleaned_up_after_missed_heartbeats);
