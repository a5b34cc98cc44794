//! Delayed messages: exchange type `x-delayed-message` with `x-delayed-type` and the `x-delay`
//! header. RabbitMQ needs a plugin for this (not installed in CI), so these run on the bundled
//! broker only.

mod common;

use std::time::{Duration, Instant};

use common::{fresh_queue, get, get_eventually, open, publish, publish_with, within};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use tests::{TestBroker, unique};

async fn delayed_exchange(ch: &Channel, inner: Option<&str>) -> lapin::Result<String> {
    let name = unique("delayed");
    let mut args = FieldTable::default();
    if let Some(t) = inner {
        args.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString(LongString::from(t)),
        );
    }
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.as_str().into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .map(|()| name)
}

fn delay(ms: i64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    BasicProperties::default().with_headers(h)
}

async fn bound_queue(ch: &Channel, x: &str, key: &str) -> String {
    let q = fresh_queue(ch, "delayed.q").await;
    within(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            x.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    q
}

/// A message with `x-delay` arrives after the delay, routed by the `x-delayed-type`; shorter
/// delays overtake longer ones; no `x-delay` means at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_after_their_delay() {
    let b = TestBroker::bundled().await;
    let (_conn, ch) = open(&b).await;
    let x = delayed_exchange(&ch, Some("direct"))
        .await
        .expect("declared");
    let q = bound_queue(&ch, &x, "k").await;
    let other = bound_queue(&ch, &x, "other").await;
    let start = Instant::now();
    publish_with(&ch, &x, "k", b"late", delay(600)).await;
    publish_with(&ch, &x, "k", b"early", delay(300)).await;
    publish(&ch, &x, "k", b"now").await;
    assert_eq!(get_eventually(&ch, &q).await, b"now");
    assert!(get(&ch, &q).await.is_none(), "the delayed ones wait");
    assert_eq!(get_eventually(&ch, &q).await, b"early");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(get_eventually(&ch, &q).await, b"late");
    assert!(start.elapsed() >= Duration::from_millis(600));
    assert!(get(&ch, &other).await.is_none(), "routed by key, as direct");
}

/// Without a valid `x-delayed-type` the declaration is refused (406), as the plugin does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_exchange_needs_a_type() {
    let b = TestBroker::bundled().await;
    let (_conn, ch) = open(&b).await;
    let err = delayed_exchange(&ch, None).await.expect_err("refused");
    assert_eq!(common::reply_code(&err), Some(406), "{err}");
    let (_conn, ch) = open(&b).await;
    let err = delayed_exchange(&ch, Some("nonsense"))
        .await
        .expect_err("refused");
    assert_eq!(common::reply_code(&err), Some(406), "{err}");
}
