//! Long durable queues against the real binary: broker memory (VmRSS / VmHWM of its process)
//! while two million 1 KiB persistent messages are queued and then consumed in order, and
//! start-up time with a million queued messages. Measurements that take minutes and gigabytes of
//! disk, so `#[ignore]`d; run them with
//! `cargo test --release -p amqp-broker --test memory -- --ignored --nocapture --test-threads 1`.
//! Each prints its figures and fails if the targets (under 200 MiB, up in 10 s) are missed.

mod common;

use common::{broker_command, durable_queue, free_port};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Confirms outstanding at once.
const WINDOW: usize = 2000;
const BODY_BYTES: usize = 1024;

/// A broker process, killed when dropped.
struct Broker {
    child: Child,
    url: String,
}

impl Broker {
    /// Starts the binary on `dir` and returns once it accepts an AMQP connection, with the time
    /// that took.
    async fn start(dir: &Path) -> (Broker, Connection, Duration) {
        let port = free_port();
        let started = Instant::now();
        let child = broker_command(port, dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the broker");
        let mut broker = Broker {
            child,
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        };
        loop {
            if let Ok(conn) =
                Connection::connect(&broker.url, ConnectionProperties::default()).await
            {
                return (broker, conn, started.elapsed());
            }
            assert!(broker.child.try_wait().unwrap().is_none(), "broker exited");
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "broker never served"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A field of `/proc/<pid>/status` in MiB (VmRSS: now, VmHWM: the peak so far).
    fn mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status (Linux only)");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"));
        kib / 1024.0
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: broker RSS {:.1} MiB (peak {:.1} MiB)",
            self.mib("VmRSS"),
            self.mib("VmHWM")
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amqp-memory-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A 1 KiB body that starts with its id.
fn body(id: u64) -> Vec<u8> {
    let mut b = vec![b'x'; BODY_BYTES];
    b[..8].copy_from_slice(&id.to_be_bytes());
    b
}

fn id_of(data: &[u8]) -> u64 {
    u64::from_be_bytes(data[..8].try_into().unwrap())
}

/// Publishes ids `0..n` with confirms (WINDOW outstanding), reporting memory every `every`.
async fn publish(broker: &Broker, conn: &Connection, queue: &str, n: u64, every: u64) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut pending = VecDeque::new();
    let started = Instant::now();
    let mut lap = Instant::now();
    for id in 0..n {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(id),
                props.clone(),
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() >= WINDOW {
            assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
        }
        if (id + 1) % every == 0 {
            let rate = every as f64 / lap.elapsed().as_secs_f64();
            broker.report(&format!("published {} ({rate:.0} msg/s)", id + 1));
            lap = Instant::now();
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "published {n} confirmed persistent 1 KiB messages in {took:.1} s: {:.0} msg/s",
        n as f64 / took
    );
    ch.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes and 2.5 GB of disk; run with --release --ignored --nocapture"]
async fn two_million_queued_messages_stay_under_200_mib_and_come_back_in_order() {
    let n: u64 = 2_000_000;
    let every = 200_000;
    let dir = data_dir("long");
    let (broker, conn, _) = Broker::start(&dir).await;
    broker.report("started");
    let setup = conn.create_channel().await.unwrap();
    durable_queue(&setup, "long").await;
    publish(&broker, &conn, "long", n, every).await;
    broker.report(&format!("{n} queued"));
    let queued_peak = broker.mib("VmHWM");

    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            "long".into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut lap = Instant::now();
    for expected in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("deliveries keep coming")
            .unwrap()
            .unwrap();
        assert_eq!(id_of(&d.data), expected, "delivered in order");
        assert_eq!(d.data.len(), BODY_BYTES);
        if (expected + 1) % 500 == 0 || expected + 1 == n {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
        if (expected + 1) % every == 0 {
            let rate = every as f64 / lap.elapsed().as_secs_f64();
            broker.report(&format!("consumed {} ({rate:.0} msg/s)", expected + 1));
            lap = Instant::now();
        }
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "consumed {n} in order in {took:.1} s: {:.0} msg/s",
        n as f64 / took
    );
    broker.report("all consumed");
    let peak = broker.mib("VmHWM");
    assert_eq!(durable_queue(&setup, "long").await.message_count(), 0);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        peak < 200.0,
        "broker peak RSS {peak:.1} MiB (with {n} queued: {queued_peak:.1} MiB); target under 200 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes and 1.2 GB of disk; run with --release --ignored --nocapture"]
async fn start_up_with_a_million_queued_messages_takes_under_10_s() {
    let n: u64 = 1_000_000;
    let dir = data_dir("startup");
    {
        let (broker, conn, _) = Broker::start(&dir).await;
        let setup = conn.create_channel().await.unwrap();
        durable_queue(&setup, "startup").await;
        publish(&broker, &conn, "startup", n, 250_000).await;
        // Every message is confirmed, so synced: a SIGKILL loses none of them.
    }
    let (broker, conn, took) = Broker::start(&dir).await;
    eprintln!(
        "restarted with {n} queued 1 KiB messages: accepting connections after {:.2} s",
        took.as_secs_f64()
    );
    broker.report("after start-up");
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(
        durable_queue(&ch, "startup").await.message_count() as u64,
        n
    );
    let first = ch
        .basic_get(
            "startup".into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a recovered message");
    assert_eq!(id_of(&first.delivery.data), 0);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(took < Duration::from_secs(10), "start-up took {took:?}");
}
