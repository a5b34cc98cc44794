//! Persistent delayed messages on a durable `x-delayed-message` exchange survive a restart on the
//! same data directory and arrive at their due time, in due-time order (overdue ones at once);
//! transient ones, and those on a transient exchange, are gone, as with RabbitMQ's plugin.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

mod common;

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amqp-delayed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(dir: &Path) -> (amqp_broker::Broker, Connection, Channel) {
    let broker = amqp_broker::Broker::builder()
        .port(0)
        .data_dir(dir)
        .start()
        .await
        .unwrap();
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (broker, conn, ch)
}

fn delayed(ms: i64, persistent: bool) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    BasicProperties::default()
        .with_delivery_mode(if persistent { 2 } else { 1 })
        .with_headers(h)
}

/// Publishes in confirm mode and waits for every confirm.
async fn publish_all(ch: &Channel, messages: &[(&str, &str, BasicProperties)]) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (exchange, body, props) in messages {
        let confirm = ch
            .basic_publish(
                (*exchange).into(),
                "k".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }
}

async fn get(ch: &Channel, queue: &str) -> Option<String> {
    let m = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()?;
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    Some(String::from_utf8(m.delivery.data).unwrap())
}

/// The next message, waiting up to `within` for it.
async fn get_within(ch: &Channel, queue: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(body) = get(ch, queue).await {
            return Some(body);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_delayed_messages_survive_a_restart_and_arrive_when_due_in_order() {
    let dir = data_dir("restart");
    let published = Instant::now();
    {
        let (broker, _conn, ch) = start(&dir).await;
        common::delayed_topology(&ch, "later", true, "later.q").await;
        common::delayed_topology(&ch, "later.transient", false, "later.q2").await;
        publish_all(
            &ch,
            &[
                ("later", "third", delayed(2000, true)),
                ("later", "first", delayed(1400, true)),
                ("later", "transient", delayed(1400, false)),
                ("later", "second", delayed(1700, true)),
                (
                    "later.transient",
                    "on a transient exchange",
                    delayed(1400, true),
                ),
            ],
        )
        .await;
        broker.shutdown().await.unwrap();
    }
    let (broker, _conn, ch) = start(&dir).await;
    assert!(
        published.elapsed() < Duration::from_millis(1200),
        "the restart took too long for this test"
    );
    assert_eq!(get(&ch, "later.q").await, None, "not due yet");
    let mut arrived = Vec::new();
    while let Some(body) = get_within(&ch, "later.q", Duration::from_secs(3)).await {
        assert!(
            published.elapsed() >= Duration::from_millis(1400),
            "{body} arrived before its due time"
        );
        arrived.push(body);
    }
    assert_eq!(
        arrived,
        ["first", "second", "third"],
        "transient ones are gone"
    );
    assert_eq!(get(&ch, "later.q2").await, None);
    broker.shutdown().await.unwrap();

    // Routed and acked: not delivered again after another restart.
    let (broker, _conn, ch) = start(&dir).await;
    assert_eq!(
        get_within(&ch, "later.q", Duration::from_millis(500)).await,
        None
    );
    broker.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_delayed_messages_go_at_once_after_a_restart_in_due_time_order() {
    let dir = data_dir("overdue");
    {
        let (broker, _conn, ch) = start(&dir).await;
        common::delayed_topology(&ch, "overdue", true, "overdue.q").await;
        publish_all(
            &ch,
            &[
                ("overdue", "b", delayed(400, true)),
                ("overdue", "a", delayed(300, true)),
                ("overdue", "c", delayed(500, true)),
            ],
        )
        .await;
        broker.shutdown().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restarted = Instant::now();
    let (broker, _conn, ch) = start(&dir).await;
    let mut arrived = Vec::new();
    while let Some(body) = get_within(&ch, "overdue.q", Duration::from_millis(500)).await {
        arrived.push(body);
    }
    assert_eq!(arrived, ["a", "b", "c"]);
    assert!(
        restarted.elapsed() < Duration::from_secs(2),
        "overdue messages wait for nothing"
    );
    broker.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_delayed_exchange_deleted_before_the_restart_takes_its_messages_with_it() {
    let dir = data_dir("deleted");
    {
        let (broker, _conn, ch) = start(&dir).await;
        common::delayed_topology(&ch, "gone", true, "gone.q").await;
        publish_all(&ch, &[("gone", "dropped", delayed(300, true))]).await;
        ch.exchange_delete("gone".into(), Default::default())
            .await
            .unwrap();
        broker.shutdown().await.unwrap();
    }
    let (broker, _conn, ch) = start(&dir).await;
    assert_eq!(
        get_within(&ch, "gone.q", Duration::from_millis(700)).await,
        None
    );
    broker.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
