//! Time to live: `x-message-ttl`, the `expiration` property, and queue expiry (`x-expires`).
//! Expired messages are never delivered; with a dead-letter exchange they are dead-lettered with
//! reason `expired`.

mod common;

use std::time::Duration;

use common::{get, get_eventually_delivery, open, publish, publish_with, within};
use lapin::options::{BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use tests::{TestBroker, conformance, unique};

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn as_text(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Declares a queue with these arguments (exclusive unless `shared`) and returns its name.
async fn queue(ch: &Channel, args: &[(&str, AMQPValue)], shared: bool) -> String {
    let name = unique("ttl");
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    let opts = QueueDeclareOptions {
        exclusive: !shared,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(name.as_str().into(), opts, table),
    )
    .await
    .expect("queue.declare");
    name
}

async fn message_count(ch: &Channel, q: &str) -> u32 {
    within(
        "passive queue.declare",
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare")
    .message_count()
}

fn expiring(ms: u32) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.to_string().into())
}

/// `x-message-ttl`: messages older than the TTL are removed (and not counted) even with nobody
/// looking, and younger ones stay.
async fn queue_ttl_removes_old_messages(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = queue(&ch, &[("x-message-ttl", AMQPValue::LongInt(200))], false).await;
    publish(&ch, "", &q, b"old").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish(&ch, "", &q, b"new").await;
    // RabbitMQ's expiry timer may lag a little under load: wait (boundedly) for the count.
    within("the old message to be removed", async {
        while message_count(&ch, &q).await != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let d = get(&ch, &q).await.expect("the new one");
    assert_eq!(d.data, b"new");
}

/// With `x-message-ttl = 0` a message nobody can take at once expires on arrival.
async fn queue_ttl_zero_expires_at_once(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = queue(&ch, &[("x-message-ttl", AMQPValue::LongInt(0))], false).await;
    publish(&ch, "", &q, b"x").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(get(&ch, &q).await.is_none());
}

/// A requeued message keeps its original expiry: it does not get a fresh TTL.
async fn a_requeued_message_keeps_its_expiry(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = queue(&ch, &[("x-message-ttl", AMQPValue::LongInt(300))], false).await;
    publish(&ch, "", &q, b"m").await;
    let d = get_eventually_delivery(&ch, &q).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    within(
        "reject",
        d.acker.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        get(&ch, &q).await.is_none(),
        "expired while out, gone once back"
    );
}

/// The `expiration` property: the message expires after that many milliseconds.
async fn message_expiration_property(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = queue(&ch, &[], false).await;
    publish_with(&ch, "", &q, b"short", expiring(100)).await;
    publish_with(&ch, "", &q, b"long", expiring(60_000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = get(&ch, &q).await.expect("the long-lived one");
    assert_eq!(d.data, b"long");
    assert!(get(&ch, &q).await.is_none());
}

/// Per-message TTL, as RabbitMQ documents it: an expired message behind an unexpired one stays
/// (and is counted) until it reaches the head, but it is never delivered.
async fn per_message_ttl_expires_at_the_head(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = queue(&ch, &[], false).await;
    publish_with(&ch, "", &q, b"long", expiring(60_000)).await;
    publish_with(&ch, "", &q, b"short", expiring(100)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        message_count(&ch, &q).await,
        2,
        "the short one waits behind"
    );
    let d = get(&ch, &q).await.expect("the long-lived one");
    assert_eq!(d.data, b"long");
    assert!(
        get(&ch, &q).await.is_none(),
        "the expired one is not delivered"
    );
}

/// Expired messages go to the dead-letter exchange with reason `expired`; the `expiration`
/// property is removed and kept as `original-expiration` in `x-death`.
async fn expired_messages_are_dead_lettered(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let dlq = queue(&ch, &[], false).await;
    let q = queue(
        &ch,
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&dlq)),
        ],
        false,
    )
    .await;
    publish_with(&ch, "", &q, b"e", expiring(50)).await;
    let d = get_eventually_delivery(&ch, &dlq).await;
    assert_eq!(d.data, b"e");
    assert!(d.properties.expiration().is_none());
    let h = d.properties.headers().clone().expect("headers");
    let h = h.inner();
    assert_eq!(
        as_text(h.get("x-first-death-reason")).as_deref(),
        Some("expired")
    );
    let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") else {
        panic!("x-death: {h:?}")
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("{deaths:?}")
    };
    assert_eq!(
        as_text(death.inner().get("reason")).as_deref(),
        Some("expired")
    );
    assert_eq!(
        as_text(death.inner().get("original-expiration")).as_deref(),
        Some("50")
    );
}

/// A queue that dead-letters expired messages to itself does not loop them forever: the message
/// that would come back to the same queue for the same reason is dropped.
async fn an_expiry_cycle_is_broken(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    // No dead-letter routing key: the message keeps its routing key, the queue's own name.
    let q = queue(
        &ch,
        &[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", text("")),
        ],
        false,
    )
    .await;
    publish(&ch, "", &q, b"loop").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        assert_eq!(message_count(&ch, &q).await, 0, "dropped, not cycling");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// `x-expires`: a queue unused for that long is deleted; one with a consumer is not.
async fn unused_queues_expire(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let idle = queue(&ch, &[("x-expires", AMQPValue::LongInt(300))], true).await;
    let used = queue(&ch, &[("x-expires", AMQPValue::LongInt(300))], true).await;
    let consumer_ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    let _consumer = common::consume(&consumer_ch, &used, "", Default::default()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !common::queue_exists(&conn, &idle).await,
        "the idle queue expired"
    );
    assert!(
        common::queue_exists(&conn, &used).await,
        "the consumed one stays"
    );
    common::delete_queue(&ch, &used).await;
}

/// Bad values are refused with RabbitMQ's 406 texts.
async fn bad_ttl_arguments_are_refused(b: TestBroker) {
    let (conn, _ch) = open(&b).await;
    for (key, value, why) in [
        (
            "x-message-ttl",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
    ] {
        let ch = within("channel.open", conn.create_channel())
            .await
            .expect("channel");
        let mut args = FieldTable::default();
        args.insert(key.into(), value);
        let err = within(
            "queue.declare",
            ch.queue_declare(
                unique("ttl.bad").as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                args,
            ),
        )
        .await
        .expect_err("refused");
        assert_eq!(common::reply_code(&err), Some(406), "{key}: {err}");
        assert!(err.to_string().contains(why), "{key}: {err}");
    }
}

conformance!(
    queue_ttl_removes_old_messages,
    queue_ttl_zero_expires_at_once,
    a_requeued_message_keeps_its_expiry,
    message_expiration_property,
    per_message_ttl_expires_at_the_head,
    expired_messages_are_dead_lettered,
    an_expiry_cycle_is_broken,
    unused_queues_expire,
    bad_ttl_arguments_are_refused,
);
