//! Single active consumer (`x-single-active-consumer`): one consumer receives; when it goes, the
//! next one (in subscription order) takes over, without losing or reordering messages.

mod common;

use common::{assert_no_delivery, next, open, publish, within};
use lapin::options::{BasicAckOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tests::{TestBroker, conformance, unique};

async fn the_next_consumer_takes_over_in_order(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = unique("sac");
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    within(
        "queue.declare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("queue.declare");
    let first_ch = within("channel.open", conn.create_channel()).await.unwrap();
    within(
        "basic.qos",
        first_ch.basic_qos(2, BasicQosOptions::default()),
    )
    .await
    .unwrap();
    let mut first = common::consume(&first_ch, &q, "first", Default::default()).await;
    let second_ch = within("channel.open", conn.create_channel()).await.unwrap();
    let mut second = common::consume(&second_ch, &q, "second", Default::default()).await;
    for i in 0..6 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let m0 = next(&mut first).await;
    assert_eq!(m0.data, b"m0");
    assert_eq!(next(&mut first).await.data, b"m1");
    assert_no_delivery(&mut second).await;
    within("ack", m0.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    assert_eq!(next(&mut first).await.data, b"m2");
    assert_no_delivery(&mut second).await;
    // The active consumer goes with m1 and m2 unacked: they come back first, in order.
    within("channel.close", first_ch.close(200, "bye".into()))
        .await
        .unwrap();
    for (i, redelivered) in [(1, true), (2, true), (3, false), (4, false), (5, false)] {
        let d = next(&mut second).await;
        assert_eq!(d.data, format!("m{i}").as_bytes());
        assert_eq!(d.redelivered, redelivered, "m{i}");
    }
}

conformance!(the_next_consumer_takes_over_in_order);
