//! A million persistent delayed messages: how fast the broker schedules them (confirmed
//! publishes per second to a durable `x-delayed-message` exchange, each confirm after the fsync),
//! the broker's RSS while they wait, and how long a restart takes to recover them.
//! A measurement, not a check:
//! `cargo test --release -p amqp-broker --test delayed_scale -- --ignored --nocapture`.

mod common;

use common::{broker_command, delayed_topology, free_port};
use std::collections::VecDeque;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const MESSAGES: usize = 1_000_000;
/// Confirms outstanding at once.
const WINDOW: usize = 2000;

/// The broker process's resident set, from `/proc/PID/status`.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

/// Starts the binary and connects; returns the time until the connection was accepted.
async fn start(port: u16, dir: &std::path::Path) -> (Child, Connection, Duration) {
    let started = Instant::now();
    let mut child = broker_command(port, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    loop {
        if let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await {
            return (child, conn, started.elapsed());
        }
        assert!(child.try_wait().unwrap().is_none(), "broker exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
async fn a_million_persistent_delayed_messages() {
    let dir = std::env::temp_dir().join(format!("amqp-delayed-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let (mut broker, conn, _) = start(port, &dir).await;
    let ch = conn.create_channel().await.unwrap();
    delayed_topology(&ch, "scale.delayed", true, "scale.q").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let rss_before = rss_mib(broker.id());
    let body = [b'x'; 16];
    let begun = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for i in 0..MESSAGES {
        // Due in one to two hours, spread so that the timer's order is not the publish order.
        let mut headers = FieldTable::default();
        let delay_ms = 3_600_000 + (i as i64 * 7919) % 3_600_000;
        headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay_ms));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = ch
            .basic_publish(
                "scale.delayed".into(),
                "k".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() >= WINDOW {
            assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
    let elapsed = begun.elapsed();
    let rss_waiting = rss_mib(broker.id());
    let disk: u64 = std::fs::read_dir(dir.join("delayed"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!(
        "{MESSAGES} persistent delayed messages (16 B bodies) scheduled in {:.1} s: {:.0} \
         confirmed/s; broker RSS {rss_before:.0} MiB before, {rss_waiting:.0} MiB with them \
         waiting; delayed log {:.0} MiB on disk",
        elapsed.as_secs_f64(),
        MESSAGES as f64 / elapsed.as_secs_f64(),
        disk as f64 / (1024.0 * 1024.0),
    );
    drop(conn);
    broker.kill().unwrap();
    broker.wait().unwrap();

    let (mut broker, _conn, recovery) = start(port, &dir).await;
    eprintln!(
        "restart with them: accepting connections after {:.2} s, RSS {:.0} MiB",
        recovery.as_secs_f64(),
        rss_mib(broker.id())
    );
    broker.kill().unwrap();
    broker.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
