//! Crash safety against the real binary: publish persistent messages with confirms as fast as
//! possible, `SIGKILL` the broker mid-stream, restart it on the same data directory and port, and
//! check that every confirmed message is there (duplicates of unconfirmed ones are allowed,
//! losses are not). Three rounds, messages accumulating; then the same with a consumer acking
//! mid-stream: no message acked before a sync barrier comes back, no unacked one is lost. And
//! persistent delayed messages: confirmed ones come back after the kill and arrive when due.

mod common;

use common::{broker_command, consume_no_ack, durable_queue, free_port};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use parking_lot::Mutex;

/// Confirms outstanding at once: enough to keep the broker's group commit busy.
const WINDOW: usize = 256;
/// How long each round publishes before the kill.
const RUN: Duration = Duration::from_millis(700);

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amqp-kill9-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A broker process, killed with SIGKILL when dropped.
struct Broker(Child);

impl Broker {
    async fn start(port: u16, dir: &Path) -> (Broker, Connection) {
        // A small memory budget, so most messages are paged out and read back from the log.
        let child = broker_command(port, dir)
            .args(["--queue-memory-bytes", "65536"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the broker");
        let mut broker = Broker(child);
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await {
                return (broker, conn);
            }
            assert!(broker.0.try_wait().unwrap().is_none(), "broker exited");
            assert!(
                Instant::now() < deadline,
                "broker did not serve within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(mut self) {
        self.0.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix.
        self.0.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publishes ids from `first` with confirms, WINDOW at a time, until the connection dies;
/// records every id the broker acked.
async fn publish_until_killed(
    ch: Channel,
    queue: String,
    first: u64,
    confirmed: Arc<Mutex<Vec<u64>>>,
) {
    let mut pending = std::collections::VecDeque::new();
    for id in first.. {
        let body = id.to_string();
        let publish = ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            persistent(),
        );
        let Ok(confirm) = publish.await else { return };
        pending.push_back((id, confirm));
        if pending.len() >= WINDOW {
            let (id, confirm) = pending.pop_front().unwrap();
            match confirm.await {
                Ok(c) if c.is_ack() => confirmed.lock().push(id),
                _ => return,
            }
        }
    }
}

/// How many messages are ready in `queue` (a passive declare).
async fn ready(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

/// Every message in the queue (consumed, then requeued by closing the channel), by id.
async fn contents(conn: &Connection, queue: &str) -> Vec<u64> {
    let ch = conn.create_channel().await.unwrap();
    let count = ready(&ch, queue).await as usize;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "check".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("recovered messages are delivered")
            .unwrap()
            .unwrap();
        ids.push(std::str::from_utf8(&d.data).unwrap().parse().unwrap());
    }
    ch.close(200, "checked".into()).await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_messages_survive_kill_9_three_times() {
    let dir = data_dir("publish");
    let port = free_port();
    let queue = "kill9.publish".to_string();
    let mut confirmed_all: Vec<u64> = Vec::new();
    let mut next_id = 0;
    for round in 0..3 {
        let (broker, conn) = Broker::start(port, &dir).await;
        let ch = conn.create_channel().await.unwrap();
        durable_queue(&ch, &queue).await;
        if round > 0 {
            let present: HashSet<u64> = contents(&conn, &queue).await.into_iter().collect();
            let lost: Vec<_> = confirmed_all
                .iter()
                .filter(|id| !present.contains(id))
                .collect();
            assert!(
                lost.is_empty(),
                "round {round}: {} confirmed messages lost, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
            next_id = present.iter().max().map_or(next_id, |m| m + 1).max(next_id);
        }
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let publisher = tokio::spawn(publish_until_killed(
            ch,
            queue.clone(),
            next_id,
            confirmed.clone(),
        ));
        tokio::time::sleep(RUN).await;
        broker.kill9();
        let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
        let confirmed = std::mem::take(&mut *confirmed.lock());
        assert!(
            !confirmed.is_empty(),
            "round {round}: nothing was confirmed"
        );
        next_id = confirmed.iter().max().unwrap() + WINDOW as u64 + 1;
        confirmed_all.extend(confirmed);
    }
    let (_broker, conn) = Broker::start(port, &dir).await;
    let present: HashSet<u64> = contents(&conn, &queue).await.into_iter().collect();
    let lost = confirmed_all
        .iter()
        .filter(|id| !present.contains(id))
        .count();
    assert_eq!(lost, 0, "confirmed messages lost after the last kill");
    eprintln!(
        "{} confirmed messages survived three SIGKILLs",
        confirmed_all.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Acks every delivery; every 100 acks it waits for a confirmed publish on the same connection,
/// which the broker answers only after syncing everything received before it: the acks before
/// that barrier are durable. Runs until the connection dies.
async fn consume_until_killed(
    conn: Connection,
    queue: String,
    acked: Arc<Mutex<(Vec<u64>, Vec<u64>)>>,
) {
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let Ok(barrier) = conn.create_channel().await else {
        return;
    };
    if ch.basic_qos(50, BasicQosOptions::default()).await.is_err()
        || barrier
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
    {
        return;
    }
    let Ok(mut consumer) = ch
        .basic_consume(
            queue.as_str().into(),
            "acker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    let mut since_barrier = Vec::new();
    while let Some(Ok(d)) = consumer.next().await {
        let id: u64 = std::str::from_utf8(&d.data).unwrap().parse().unwrap();
        if d.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
        acked.lock().1.push(id);
        since_barrier.push(id);
        if since_barrier.len() >= 100 {
            let marker = barrier
                .basic_publish(
                    "".into(),
                    format!("{queue}.barrier").as_str().into(),
                    BasicPublishOptions::default(),
                    b"",
                    persistent(),
                )
                .await;
            let Ok(marker) = marker else { return };
            match marker.await {
                Ok(c) if c.is_ack() => acked.lock().0.append(&mut since_barrier),
                _ => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_survive_kill_9_and_unacked_messages_are_not_lost() {
    let dir = data_dir("consume");
    let port = free_port();
    let queue = "kill9.consume".to_string();
    // (acked before a barrier: must not come back; acked at all)
    let mut durable_acks: HashSet<u64> = HashSet::new();
    let mut any_acks: HashSet<u64> = HashSet::new();
    let mut confirmed_all: BTreeSet<u64> = BTreeSet::new();
    let mut next_id = 0;
    for round in 0..3 {
        let (broker, conn) = Broker::start(port, &dir).await;
        let ch = conn.create_channel().await.unwrap();
        durable_queue(&ch, &queue).await;
        durable_queue(&ch, &format!("{queue}.barrier")).await;
        let present: Vec<u64> = contents(&conn, &queue).await;
        let came_back: Vec<_> = present
            .iter()
            .filter(|id| durable_acks.contains(id))
            .collect();
        assert!(
            came_back.is_empty(),
            "round {round}: acked messages came back: {:?}",
            &came_back[..came_back.len().min(5)]
        );
        let present: HashSet<u64> = present.into_iter().collect();
        let lost: Vec<_> = confirmed_all
            .iter()
            .filter(|id| !any_acks.contains(id) && !present.contains(id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: unacked confirmed messages lost: {:?}",
            &lost[..lost.len().min(5)]
        );
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let consumer_conn = Connection::connect(
            &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let consumer = tokio::spawn(consume_until_killed(
            consumer_conn,
            queue.clone(),
            acked.clone(),
        ));
        let publisher = tokio::spawn(publish_until_killed(
            ch,
            queue.clone(),
            next_id,
            confirmed.clone(),
        ));
        tokio::time::sleep(RUN).await;
        broker.kill9();
        let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), consumer).await;
        let confirmed = std::mem::take(&mut *confirmed.lock());
        assert!(
            !confirmed.is_empty(),
            "round {round}: nothing was confirmed"
        );
        next_id = confirmed.iter().max().unwrap() + WINDOW as u64 + 1;
        confirmed_all.extend(confirmed);
        let (barriered, all) = std::mem::take(&mut *acked.lock());
        assert!(
            !barriered.is_empty(),
            "round {round}: the consumer acked nothing durably"
        );
        durable_acks.extend(barriered);
        any_acks.extend(all);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Persistent messages with `x-delay` to a durable `x-delayed-message` exchange, ids from 0 with
/// confirms, until the connection dies; records every id the broker acked.
async fn publish_delayed_until_killed(
    ch: Channel,
    exchange: String,
    delay_ms: i64,
    confirmed: Arc<Mutex<Vec<u64>>>,
) {
    let mut headers = FieldTable::default();
    headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay_ms));
    let props = persistent().with_headers(headers);
    let mut pending = std::collections::VecDeque::new();
    for id in 0u64.. {
        let body = id.to_string();
        let publish = ch.basic_publish(
            exchange.as_str().into(),
            "k".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props.clone(),
        );
        let Ok(confirm) = publish.await else { return };
        pending.push_back((id, confirm));
        if pending.len() >= WINDOW {
            let (id, confirm) = pending.pop_front().unwrap();
            match confirm.await {
                Ok(c) if c.is_ack() => confirmed.lock().push(id),
                _ => return,
            }
        }
    }
}

/// A confirmed persistent delayed message survives `kill -9` and is delivered at its due time,
/// not before, in due-time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_delayed_messages_survive_kill_9_and_arrive_when_due() {
    const DELAY_MS: i64 = 4000;
    let dir = data_dir("delayed");
    let port = free_port();
    let (exchange, queue) = ("kill9.delayed", "kill9.delayed.q");
    let (broker, conn) = Broker::start(port, &dir).await;
    let ch = conn.create_channel().await.unwrap();
    common::delayed_topology(&ch, exchange, true, queue).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let publisher = tokio::spawn(publish_delayed_until_killed(
        ch,
        exchange.to_owned(),
        DELAY_MS,
        confirmed.clone(),
    ));
    tokio::time::sleep(RUN).await;
    broker.kill9();
    let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
    let confirmed = std::mem::take(&mut *confirmed.lock());
    assert!(!confirmed.is_empty(), "nothing was confirmed");

    let (_broker, conn) = Broker::start(port, &dir).await;
    let ch = conn.create_channel().await.unwrap();
    let waiting = ready(&ch, queue).await;
    assert!(
        started.elapsed() < Duration::from_millis(DELAY_MS as u64 - 500),
        "the restart took too long for this check"
    );
    assert_eq!(waiting, 0, "nothing is delivered before its due time");
    let mut consumer = consume_no_ack(&ch, queue, "check").await;
    let expected: BTreeSet<u64> = confirmed.iter().copied().collect();
    let mut arrived = Vec::new();
    let mut seen = BTreeSet::new();
    while !expected.is_subset(&seen) {
        let d = tokio::time::timeout(Duration::from_secs(15), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} confirmed delayed messages lost",
                    expected.difference(&seen).count()
                )
            })
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(DELAY_MS as u64),
            "delivered before its due time"
        );
        let id: u64 = std::str::from_utf8(&d.data).unwrap().parse().unwrap();
        seen.insert(id);
        arrived.push(id);
    }
    assert!(
        arrived.windows(2).all(|w| w[0] < w[1]),
        "delivered in due-time (= publish) order"
    );
    eprintln!(
        "{} confirmed delayed messages survived SIGKILL",
        confirmed.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
