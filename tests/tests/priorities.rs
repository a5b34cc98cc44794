//! Priorities: `x-max-priority` queues deliver higher message priorities first; consumers with a
//! higher `x-priority` are served first while they have credit.

mod common;

use common::{assert_no_delivery, drain, next, open, publish_with, within};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use tests::{TestBroker, conformance, unique};

async fn priority_queue(ch: &Channel, max: i32) -> String {
    let name = unique("prio");
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongInt(max));
    within(
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("queue.declare");
    name
}

/// Higher priorities first, FIFO within one; priorities above the maximum count as the maximum;
/// no priority counts as 0.
async fn higher_priorities_are_delivered_first(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = priority_queue(&ch, 5).await;
    for (body, p) in [
        ("none", None),
        ("p1", Some(1)),
        ("p9", Some(9)),
        ("p5", Some(5)),
        ("p1b", Some(1)),
    ] {
        let mut props = BasicProperties::default();
        if let Some(p) = p {
            props = props.with_priority(p);
        }
        publish_with(&ch, "", &q, body.as_bytes(), props).await;
    }
    let got: Vec<String> = drain(&ch, &q)
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(got, ["p9", "p5", "p1", "p1b", "none"], "p9 is capped at 5");
}

/// Without `x-max-priority` the priority property is ignored: FIFO.
async fn priorities_need_max_priority(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = common::fresh_queue(&ch, "prio.none").await;
    publish_with(
        &ch,
        "",
        &q,
        b"low",
        BasicProperties::default().with_priority(0),
    )
    .await;
    publish_with(
        &ch,
        "",
        &q,
        b"high",
        BasicProperties::default().with_priority(9),
    )
    .await;
    assert_eq!(drain(&ch, &q).await, [b"low".to_vec(), b"high".to_vec()]);
}

async fn consumer_with_priority(
    ch: &Channel,
    q: &str,
    priority: Option<i32>,
    prefetch: u16,
) -> Consumer {
    within(
        "basic.qos",
        ch.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await
    .expect("basic.qos");
    let mut args = FieldTable::default();
    if let Some(p) = priority {
        args.insert("x-priority".into(), AMQPValue::LongInt(p));
    }
    within(
        "basic.consume",
        ch.basic_consume(q.into(), "".into(), BasicConsumeOptions::default(), args),
    )
    .await
    .expect("basic.consume")
}

/// A higher-priority consumer gets every message while it has credit; a lower one gets messages
/// only once the higher one is full.
async fn consumer_priorities(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = common::fresh_queue(&ch, "prio.consumers").await;
    let low_ch = within("channel.open", conn.create_channel()).await.unwrap();
    let high_ch = within("channel.open", conn.create_channel()).await.unwrap();
    let mut low = consumer_with_priority(&low_ch, &q, None, 0).await;
    let mut high = consumer_with_priority(&high_ch, &q, Some(10), 2).await;
    for i in 0..5 {
        publish_with(&ch, "", &q, format!("m{i}").as_bytes(), Default::default()).await;
    }
    assert_eq!(next(&mut high).await.data, b"m0");
    assert_eq!(next(&mut high).await.data, b"m1");
    for i in 2..5 {
        assert_eq!(next(&mut low).await.data, format!("m{i}").as_bytes());
    }
    assert_no_delivery(&mut high).await;
}

conformance!(
    higher_priorities_are_delivered_first,
    priorities_need_max_priority,
    consumer_priorities,
);
