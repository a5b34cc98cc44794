//! Confirmed messages per second, one producer, one queue: persistent messages to a durable queue
//! (each confirm after an fsync, grouped) against transient messages to a transient queue.
//! A measurement, not a check: `cargo test --release -p amqp-broker --test throughput -- --ignored --nocapture`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Confirms outstanding at once.
const WINDOW: usize = 1000;
const RUN: Duration = Duration::from_secs(3);

async fn confirmed_per_sec(url: &str, durable: bool, body_bytes: usize) -> f64 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("bench.{durable}.{body_bytes}");
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), options, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_delivery_mode(if durable { 2 } else { 1 });
    let body = vec![b'x'; body_bytes];
    let mut pending = VecDeque::new();
    let mut confirmed = 0u64;
    let start = Instant::now();
    while start.elapsed() < RUN {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() >= WINDOW {
            assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
            confirmed += 1;
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
        confirmed += 1;
    }
    confirmed as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
async fn confirmed_messages_per_second() {
    let dir = std::env::temp_dir().join(format!("amqp-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = amqp_broker::Broker::builder()
        .port(0)
        .data_dir(&dir)
        .start()
        .await
        .unwrap();
    let url = broker.amqp_url();
    for body_bytes in [16, 1024] {
        let persistent = confirmed_per_sec(&url, true, body_bytes).await;
        let transient = confirmed_per_sec(&url, false, body_bytes).await;
        eprintln!(
            "{body_bytes:>5} B bodies: {persistent:>9.0} confirmed/s persistent+durable, \
             {transient:>9.0} confirmed/s transient"
        );
    }
    broker.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
