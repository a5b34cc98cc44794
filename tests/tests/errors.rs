//! Error handling: reply text format, soft (channel) versus hard (connection) errors, what a
//! failed channel does to its consumers and unacked messages, and unsupported features.

mod common;

use std::time::Duration;

use common::{
    Errors, assert_code, code, consume, fresh_queue, get, get_eventually_delivery, open, publish,
    within,
};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    BasicRecoverOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPErrorKind;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ErrorKind};
use tests::{TestBroker, conformance, unique};

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn wait_closed(conn: &Connection) {
    within("connection to close", async {
        while conn.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn wait_channel_closed(ch: &Channel) {
    within("channel to close", async {
        while ch.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Reply texts start with the reply code's name: "NOT_FOUND - no queue 'x' in vhost '/'".
async fn reply_text_names_the_code(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let name = unique("err.text");
    let err = within(
        "passive declare",
        ch.queue_declare(name.as_str().into(), passive(), FieldTable::default()),
    )
    .await
    .expect_err("missing queue");
    let ErrorKind::ProtocolError(amqp) = err.kind() else {
        panic!("not a protocol error: {err}")
    };
    assert!(
        matches!(amqp.kind(), AMQPErrorKind::Soft(_)),
        "404 is a channel error"
    );
    let text = amqp.get_message().as_str();
    assert!(text.starts_with("NOT_FOUND - "), "reply text: {text}");
    assert!(text.contains(&name), "reply text names the queue: {text}");

    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "err.text2").await;
    let err = within(
        "redeclare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("inequivalent redeclare");
    let text = err.to_string();
    assert!(text.contains("PRECONDITION_FAILED - "), "{text}");
}

/// Consumers on a channel that the server closes get the error through their stream.
async fn consumers_on_failed_channel_get_the_error(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "err.consumer").await;
    let mut c = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    assert_code(
        within(
            "passive",
            ch.queue_declare(unique("missing").into(), passive(), FieldTable::default()),
        )
        .await,
        code::NOT_FOUND,
    );
    match within("consumer error", c.next()).await {
        Some(Err(e)) => assert_eq!(common::reply_code(&e), Some(code::NOT_FOUND), "{e}"),
        other => panic!("expected the channel error on the consumer stream, got {other:?}"),
    }
}

/// A channel error requeues that channel's unacked messages.
async fn unacked_requeued_after_channel_error(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "err.requeue").await;
    publish(&ch, "", &q, b"held").await;
    let failing = conn.create_channel().await.expect("channel");
    let d = get_eventually_delivery(&failing, &q).await;
    assert!(!d.redelivered);
    assert_code(
        within(
            "passive",
            failing.queue_declare(unique("missing").into(), passive(), FieldTable::default()),
        )
        .await,
        code::NOT_FOUND,
    );
    let again = get_eventually_delivery(&ch, &q).await;
    assert_eq!(again.data, b"held");
    assert!(again.redelivered);
}

/// A failing method sent with nowait still closes the channel (there is no reply to fail).
async fn nowait_failure_closes_channel(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let mut errors = Errors::watch(&conn);
    let _ = ch
        .queue_declare(
            unique("missing").into(),
            QueueDeclareOptions {
                passive: true,
                nowait: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(errors.next_code().await, code::NOT_FOUND);
    wait_channel_closed(&ch).await;
    assert!(conn.status().connected());
}

/// A hard error ends every channel of the connection, and their consumers see the error; the
/// connection's exclusive queues go with it.
async fn hard_error_reaches_every_channel(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let bystander = conn.create_channel().await.expect("channel");
    let q = fresh_queue(&bystander, "err.hard").await;
    let mut c = consume(&bystander, &q, "", BasicConsumeOptions::default()).await;
    let _first = consume(&ch, &q, "same-tag", BasicConsumeOptions::default()).await;
    let res = within(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "same-tag".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_ALLOWED);
    match within("consumer error", c.next()).await {
        Some(Err(e)) => assert_eq!(common::reply_code(&e), Some(code::NOT_ALLOWED), "{e}"),
        other => panic!("expected the connection error on the consumer stream, got {other:?}"),
    }
    wait_closed(&conn).await;
    let (watcher, _wch) = open(&b).await;
    common::wait_queue_gone(&watcher, &q).await;
}

/// RabbitMQ does not support `immediate`: 540 NOT_IMPLEMENTED, a connection error.
async fn immediate_publish_is_540(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "err.immediate").await;
    let mut errors = Errors::watch(&conn);
    let _ = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"now",
            BasicProperties::default(),
        )
        .await;
    assert_eq!(errors.next_code().await, code::NOT_IMPLEMENTED);
    wait_closed(&conn).await;
}

/// basic.recover with requeue=false is not implemented: 540, a connection error.
async fn recover_without_requeue_is_540(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    assert_code(
        within(
            "basic.recover",
            ch.basic_recover(BasicRecoverOptions { requeue: false }),
        )
        .await,
        code::NOT_IMPLEMENTED,
    );
    wait_closed(&conn).await;
}

async fn nack_unknown_delivery_tag_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let mut errors = Errors::watch(&conn);
    let _ = ch.basic_nack(7, BasicNackOptions::default()).await;
    assert_eq!(errors.next_code().await, code::PRECONDITION_FAILED);
    wait_channel_closed(&ch).await;
    assert!(conn.status().connected());
}

async fn reject_unknown_delivery_tag_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let mut errors = Errors::watch(&conn);
    let _ = ch.basic_reject(7, BasicRejectOptions::default()).await;
    assert_eq!(errors.next_code().await, code::PRECONDITION_FAILED);
    wait_channel_closed(&ch).await;
}

/// `ack(0, multiple)` means "everything outstanding" and is fine with nothing outstanding;
/// `ack(0)` without multiple names no delivery and is an error.
async fn ack_zero(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "err.ack0").await;
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    let _a = get_eventually_delivery(&ch, &q).await;
    let _b = get_eventually_delivery(&ch, &q).await;
    within("ack", ch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .expect("ack all");
    within("ack", ch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .expect("ack all again");
    // Both acked: a round trip later the channel is still open and the queue is empty.
    assert!(get(&ch, &q).await.is_none());
    ch.close(200, "bye".into()).await.expect("close");
    let ch2 = conn.create_channel().await.expect("channel");
    assert!(get(&ch2, &q).await.is_none(), "nothing was left unacked");

    let mut errors = Errors::watch(&conn);
    let _ = ch2.basic_ack(0, BasicAckOptions { multiple: false }).await;
    assert_eq!(errors.next_code().await, code::PRECONDITION_FAILED);
}

/// After a channel error the client can keep using the connection, including opening a channel
/// that reuses the closed channel's number.
async fn connection_usable_after_many_channel_errors(b: TestBroker) {
    let (conn, _ch) = open(&b).await;
    for _ in 0..10 {
        let ch = conn.create_channel().await.expect("channel");
        assert_code(
            within(
                "passive",
                ch.queue_declare(unique("missing").into(), passive(), FieldTable::default()),
            )
            .await,
            code::NOT_FOUND,
        );
    }
    let ch = conn.create_channel().await.expect("channel");
    let q = fresh_queue(&ch, "err.after").await;
    publish(&ch, "", &q, b"ok").await;
    assert_eq!(common::get_eventually(&ch, &q).await, b"ok");
}

conformance!(
    reply_text_names_the_code,
    consumers_on_failed_channel_get_the_error,
    unacked_requeued_after_channel_error,
    nowait_failure_closes_channel,
    hard_error_reaches_every_channel,
    immediate_publish_is_540,
    recover_without_requeue_is_540,
    nack_unknown_delivery_tag_is_406,
    reject_unknown_delivery_tag_is_406,
    ack_zero,
    connection_usable_after_many_channel_errors,
);
