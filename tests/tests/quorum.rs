//! Quorum queue declarations (`x-queue-type = quorum`): RabbitMQ's constraints and their 406
//! texts, and `x-delivery-limit` with the `x-delivery-count` header.

mod common;

use common::{get, get_eventually_delivery, open, publish, within};
use lapin::Channel;
use lapin::options::{BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tests::{TestBroker, conformance, unique};

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(args: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Declares on a fresh channel; returns the error text if refused.
async fn declare(
    conn: &lapin::Connection,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> Result<(), String> {
    let ch = within("channel.open", conn.create_channel()).await.unwrap();
    match within("queue.declare", ch.queue_declare(name.into(), opts, args)).await {
        Ok(_) => Ok(()),
        Err(e) => {
            assert_eq!(common::reply_code(&e), Some(406), "{e}");
            Err(e.to_string())
        }
    }
}

async fn quorum_constraints(b: TestBroker) {
    let (conn, _ch) = open(&b).await;
    let quorum = || table(&[("x-queue-type", text("quorum"))]);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (opts, property) in [
        (QueueDeclareOptions::default(), "non-durable"),
        (
            QueueDeclareOptions {
                exclusive: true,
                ..durable
            },
            "exclusive-owner",
        ),
        (
            QueueDeclareOptions {
                auto_delete: true,
                ..durable
            },
            "auto-delete",
        ),
    ] {
        let q = unique("quorum.bad");
        let err = declare(&conn, &q, opts, quorum())
            .await
            .expect_err(property);
        assert!(
            err.contains(&format!(
                "invalid property '{property}' for queue '{q}' in vhost '/'"
            )),
            "{err}"
        );
    }
    let q = unique("quorum.prio");
    let mut args = quorum();
    args.insert("x-max-priority".into(), AMQPValue::LongInt(5));
    let err = declare(&conn, &q, durable, args)
        .await
        .expect_err("priority");
    assert!(
        err.contains("invalid arg 'x-max-priority' for queue")
            && err.contains("of queue type rabbit_quorum_queue"),
        "{err}"
    );
    let q = unique("classic.limit");
    let args = table(&[("x-delivery-limit", AMQPValue::LongInt(3))]);
    let err = declare(&conn, &q, QueueDeclareOptions::default(), args)
        .await
        .expect_err("classic delivery limit");
    assert!(err.contains("of queue type rabbit_classic_queue"), "{err}");
}

async fn nack_requeue(ch: &Channel, q: &str) -> lapin::message::Delivery {
    let d = get_eventually_delivery(ch, q).await;
    within(
        "nack",
        d.acker.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        }),
    )
    .await
    .expect("nack");
    d
}

/// `x-delivery-limit = 1`: a redelivery carries `x-delivery-count = 1`; returned once more, the
/// message is dead-lettered with reason `delivery_limit`.
async fn delivery_limit_dead_letters(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let dlq = common::fresh_queue(&ch, "quorum.dlq").await;
    let q = unique("quorum.limit");
    let args = table(&[
        ("x-queue-type", text("quorum")),
        ("x-delivery-limit", AMQPValue::LongInt(1)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&dlq)),
    ]);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare(&conn, &q, durable, args).await.expect("declared");
    publish(&ch, "", &q, b"poison").await;
    let first = nack_requeue(&ch, &q).await;
    assert!(!first.redelivered);
    let second = nack_requeue(&ch, &q).await;
    assert!(second.redelivered);
    let headers = second.properties.headers().clone().expect("headers");
    assert_eq!(
        headers.inner().get("x-delivery-count"),
        Some(&AMQPValue::LongLongInt(1))
    );
    let dead = get_eventually_delivery(&ch, &dlq).await;
    assert_eq!(dead.data, b"poison");
    let h = dead.properties.headers().clone().expect("headers");
    assert_eq!(
        h.inner().get("x-first-death-reason"),
        Some(&text("delivery_limit"))
    );
    assert!(get(&ch, &q).await.is_none());
    within(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
}

conformance!(quorum_constraints, delivery_limit_dead_letters);
