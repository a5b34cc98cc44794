//! Limits: `x-max-length` with `x-overflow` (`drop-head`, and `reject-publish`, which is what makes
//! a publisher-confirm nack), and the broker's maximum message size.

mod common;

use common::{drain, open, within};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use tests::{TestBroker, conformance, unique};

async fn limited_queue(ch: &Channel, max: i32, overflow: &str) -> String {
    let name = unique("limits");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(max));
    args.insert("x-overflow".into(), AMQPValue::LongString(overflow.into()));
    let opts = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(name.as_str().into(), opts, args),
    )
    .await
    .expect("queue.declare");
    name
}

async fn publish_confirmed(ch: &Channel, queue: &str, body: &[u8]) -> Confirmation {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
    within("publisher confirm", confirm).await.expect("confirm")
}

/// A full `reject-publish` queue refuses new messages: the publisher gets `basic.nack`.
async fn reject_publish_overflow_nacks(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let q = limited_queue(&ch, 2, "reject-publish").await;
    assert!(publish_confirmed(&ch, &q, b"1").await.is_ack());
    assert!(publish_confirmed(&ch, &q, b"2").await.is_ack());
    assert!(
        publish_confirmed(&ch, &q, b"3").await.is_nack(),
        "the third is refused"
    );
    assert_eq!(drain(&ch, &q).await, [b"1".to_vec(), b"2".to_vec()]);
}

/// `drop-head` (the default) makes room by dropping the oldest message.
async fn drop_head_overflow_keeps_the_newest(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let q = limited_queue(&ch, 2, "drop-head").await;
    for body in [b"1", b"2", b"3"] {
        assert!(publish_confirmed(&ch, &q, body).await.is_ack());
    }
    assert_eq!(drain(&ch, &q).await, [b"2".to_vec(), b"3".to_vec()]);
}

conformance!(
    reject_publish_overflow_nacks,
    drop_head_overflow_keeps_the_newest
);

/// A message over `max_message_bytes` closes the channel with 406 from its content header alone.
#[tokio::test]
async fn a_message_over_the_size_limit_is_refused() {
    let b = TestBroker::bundled_with(amqp_broker::Broker::builder().max_message_bytes(1000)).await;
    let (conn, ch) = open(&b).await;
    let q = unique("limits.size");
    let opts = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(q.as_str().into(), opts, FieldTable::default()),
    )
    .await
    .expect("queue.declare");
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    assert!(
        publish_confirmed(&ch, &q, &[0; 1000]).await.is_ack(),
        "at the limit is fine"
    );
    let mut errors = common::Errors::watch(&conn);
    let _ = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &[0; 1001],
            BasicProperties::default(),
        )
        .await;
    assert_eq!(errors.next_code().await, 406);
    // The connection survives: a new channel works.
    let ch2 = within("channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    within(
        "queue.declare",
        ch2.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("the connection still serves");
}

/// Queue arguments the bundled broker does not implement yet are refused with a 406 that says
/// so, rather than accepted and silently ignored (RabbitMQ honours them; this is a deliberate,
/// temporary difference).
#[tokio::test]
async fn unsupported_queue_arguments_are_refused_not_ignored() {
    let b = TestBroker::bundled().await;
    let (conn, _ch) = open(&b).await;
    let cases = [
        ("x-message-ttl", AMQPValue::LongInt(1000)),
        ("x-max-priority", AMQPValue::LongInt(10)),
        ("x-queue-type", AMQPValue::LongString("quorum".into())),
    ];
    for (key, value) in cases {
        let ch = within("channel.open", conn.create_channel())
            .await
            .expect("channel");
        let mut args = FieldTable::default();
        args.insert(key.into(), value);
        let err = within(
            "queue.declare",
            ch.queue_declare(
                unique("limits.unsupported").as_str().into(),
                QueueDeclareOptions::default(),
                args,
            ),
        )
        .await
        .expect_err("refused");
        assert_eq!(common::reply_code(&err), Some(406), "{key}: {err}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}
