//! Limits: `x-max-length` and `x-max-length-bytes` with `x-overflow` (`drop-head`, and
//! `reject-publish`, which is what makes a publisher-confirm nack), and the broker's maximum
//! message size, and the broker-wide limits: queued bytes per queue, connections, channels per
//! connection and consumers per channel.

mod common;

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic, connection, queue};
use common::{drain, open, within};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use tests::raw::{self, RawClient, Read};
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

/// `x-max-length-bytes` counts body bytes: with `drop-head` the oldest go until the rest fit.
async fn max_length_bytes_drops_the_oldest(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = queue_with(&ch, &[("x-max-length-bytes", AMQPValue::LongInt(10))]).await;
    for body in [b"aaaa", b"bbbb", b"cccc"] {
        common::publish(&ch, "", &q, body).await;
    }
    assert_eq!(drain(&ch, &q).await, [b"bbbb".to_vec(), b"cccc".to_vec()]);
}

/// `x-max-length-bytes` with `reject-publish`: a message that would not fit is nacked.
async fn max_length_bytes_rejects_publish(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let q = queue_with(
        &ch,
        &[
            ("x-max-length-bytes", AMQPValue::LongInt(6)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
        ],
    )
    .await;
    assert!(publish_confirmed(&ch, &q, b"1234").await.is_ack());
    assert!(publish_confirmed(&ch, &q, b"56").await.is_ack());
    assert!(
        publish_confirmed(&ch, &q, b"7").await.is_nack(),
        "7 bytes > 6"
    );
    assert_eq!(drain(&ch, &q).await, [b"1234".to_vec(), b"56".to_vec()]);
}

async fn queue_with(ch: &Channel, args: &[(&str, AMQPValue)]) -> String {
    let name = unique("limits");
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    let opts = QueueDeclareOptions {
        exclusive: true,
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

conformance!(
    max_length_bytes_drops_the_oldest,
    max_length_bytes_rejects_publish
);

/// The broker-wide cap (`queue_max_length_bytes`, RabbitMQ's operator policy `max-length-bytes`)
/// holds every queue to that many bytes of ready bodies: past it a queue without `x-overflow`
/// drops its oldest messages, a `reject-publish` queue nacks, and a queue's own lower
/// `x-max-length-bytes` still applies. (Bundled only: an operator policy on the shared RabbitMQ
/// would reach other tests' queues.)
#[tokio::test]
async fn the_broker_wide_queue_bytes_cap_applies_to_every_queue() {
    let b =
        TestBroker::bundled_with(amqp_broker::Broker::builder().queue_max_length_bytes(10)).await;
    let (_conn, ch) = open(&b).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");

    let plain = queue_with(&ch, &[]).await;
    for body in [b"aaaa", b"bbbb", b"cccc"] {
        assert!(publish_confirmed(&ch, &plain, body).await.is_ack());
    }
    assert_eq!(
        drain(&ch, &plain).await,
        [b"bbbb".to_vec(), b"cccc".to_vec()],
        "drop-head: the oldest went to make room"
    );

    let rejecting = queue_with(
        &ch,
        &[("x-overflow", AMQPValue::LongString("reject-publish".into()))],
    )
    .await;
    assert!(publish_confirmed(&ch, &rejecting, b"123456").await.is_ack());
    assert!(publish_confirmed(&ch, &rejecting, b"7890").await.is_ack());
    assert!(
        publish_confirmed(&ch, &rejecting, b"x").await.is_nack(),
        "11 bytes > the cap of 10"
    );
    assert_eq!(
        drain(&ch, &rejecting).await,
        [b"123456".to_vec(), b"7890".to_vec()]
    );

    let lower = queue_with(&ch, &[("x-max-length-bytes", AMQPValue::LongInt(4))]).await;
    for body in [b"aaaa", b"bbbb"] {
        assert!(publish_confirmed(&ch, &lower, body).await.is_ack());
    }
    assert_eq!(
        drain(&ch, &lower).await,
        [b"bbbb".to_vec()],
        "the queue's own 4 bytes, not the cap's 10"
    );
    b.shutdown().await;
}

/// Stream queues are refused with a 406 that says so (RabbitMQ 3.10 with its stream plugin
/// accepts them: a deliberate difference, so this test is bundled-only).
#[tokio::test]
async fn stream_queues_are_refused_clearly() {
    let b = TestBroker::bundled().await;
    let (_conn, ch) = open(&b).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let err = within(
        "queue.declare",
        ch.queue_declare(
            unique("limits.stream").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect_err("refused");
    assert_eq!(common::reply_code(&err), Some(406), "{err}");
    assert!(
        err.to_string().contains("stream queues are not supported"),
        "{err}"
    );
}

// --- Broker-wide limits, configured on the builder (bundled only: RabbitMQ's are node settings) ---

/// A raw client's `basic.consume` of `queue` with tag `tag` on `channel`.
fn raw_consume(queue: &str, tag: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack: true,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

/// A raw client's `queue.declare` of an exclusive server-named queue; returns its name.
async fn raw_exclusive_queue(c: &mut RawClient, channel: u16) -> String {
    let declare = queue::Declare {
        queue: "".into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: true,
        nowait: false,
        arguments: FieldTable::default(),
    };
    c.send_method(
        channel,
        AMQPClass::Queue(queue::AMQPMethod::Declare(declare)),
    )
    .await;
    match c.recv_method().await {
        (ch, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) if ch == channel => {
            ok.queue.to_string()
        }
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

/// `channel_max` is offered in `connection.tune`; opening one channel more than that closes the
/// connection with RabbitMQ's 530 and text.
#[tokio::test]
async fn the_configured_channel_max_is_offered_and_enforced() {
    let b = TestBroker::bundled_with(amqp_broker::Broker::builder().channel_max(3)).await;
    let (mut c, tune) = RawClient::handshake(&b.addr()).await;
    assert_eq!(tune.channel_max, 3);
    for channel in 1..=3 {
        c.open_channel(channel).await;
    }
    c.send_channel_open(4).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (530, 0, 0), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)"
    );
    raw::assert_serves(&b.addr()).await;
}

/// One `basic.consume` over `max_consumers_per_channel` closes the connection with 530 and
/// RabbitMQ's text (its `consumer_max_per_channel`, 3.12+, which answers the same way); a
/// cancelled consumer frees its slot, and other channels have their own allowance.
#[tokio::test]
async fn consumers_per_channel_are_bounded() {
    let b =
        TestBroker::bundled_with(amqp_broker::Broker::builder().max_consumers_per_channel(2)).await;
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    let q = raw_exclusive_queue(&mut c, 1).await;
    for tag in ["a", "b"] {
        c.send_method(1, raw_consume(&q, tag)).await;
        assert!(
            matches!(
                c.recv_method().await,
                (1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
            ),
            "consumer {tag} is accepted"
        );
    }
    // A cancel frees a slot.
    let cancel = basic::Cancel {
        consumer_tag: "a".into(),
        nowait: false,
    };
    c.send_method(1, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)))
        .await;
    assert!(matches!(
        c.recv_method().await,
        (1, AMQPClass::Basic(basic::AMQPMethod::CancelOk(_)))
    ));
    c.send_method(1, raw_consume(&q, "c")).await;
    assert!(matches!(
        c.recv_method().await,
        (1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    ));
    // Another channel counts its own consumers.
    c.open_channel(2).await;
    c.send_method(2, raw_consume(&q, "d")).await;
    assert!(matches!(
        c.recv_method().await,
        (2, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    ));
    c.send_method(1, raw_consume(&q, "e")).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (530, 60, 20), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "NOT_ALLOWED - reached maximum (2) of consumers per channel"
    );
    raw::assert_serves(&b.addr()).await;
}

/// Past `max_connections` a client is not served until a connection closes: like RabbitMQ's
/// `connection_max` (a limit on its acceptor), it gets no `connection.start` meanwhile, then is
/// served normally.
#[tokio::test]
async fn connections_past_the_limit_wait_for_a_slot() {
    let b = TestBroker::bundled_with(amqp_broker::Broker::builder().max_connections(1)).await;
    let (mut first, _) = RawClient::handshake(&b.addr()).await;
    let mut second = RawClient::connect(&b.addr()).await;
    second.send_bytes(raw::PROTOCOL_HEADER).await;
    assert!(
        matches!(
            second.read_within(Duration::from_millis(500)).await,
            Read::TimedOut
        ),
        "no connection.start while the only slot is taken"
    );
    first.close().await;
    match second.recv_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => {}
        other => panic!("expected connection.start once the slot freed, got {other:?}"),
    }
    drop(second);
    raw::assert_serves(&b.addr()).await;
}
