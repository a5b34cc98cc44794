//! Direct reply-to: the pseudo-queue `amq.rabbitmq.reply-to`.

mod common;

use common::{Errors, assert_code, code, consume, fresh_queue, next, open, publish_with, within};
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use tests::{TestBroker, conformance};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

async fn request_reply_roundtrip(b: TestBroker) {
    // The server side: its own connection, consuming the request queue.
    let (_sconn, sch) = open(&b).await;
    let requests = fresh_queue(&sch, "rpc.requests").await;
    let mut server = consume(&sch, &requests, "", no_ack()).await;

    // The client: consume the pseudo-queue, then publish with reply-to on the same channel.
    let (_cconn, cch) = open(&b).await;
    let mut replies = consume(&cch, REPLY_TO, "", no_ack()).await;
    let props = BasicProperties::default()
        .with_reply_to(REPLY_TO.into())
        .with_correlation_id("c-1".into());
    publish_with(&cch, "", &requests, b"ping", props).await;

    let request = next(&mut server).await;
    assert_eq!(request.data, b"ping");
    let reply_to = request
        .properties
        .reply_to()
        .clone()
        .expect("reply_to is set")
        .to_string();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to."),
        "reply_to is rewritten: {reply_to}"
    );
    assert!(reply_to.len() > "amq.rabbitmq.reply-to.".len());
    assert_eq!(
        request
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-1")
    );

    let reply_props = BasicProperties::default().with_correlation_id("c-1".into());
    publish_with(&sch, "", &reply_to, b"pong", reply_props).await;

    let reply = next(&mut replies).await;
    assert_eq!(reply.data, b"pong");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-1")
    );
    assert_eq!(reply.exchange.as_str(), "");
    assert_eq!(reply.routing_key.as_str(), reply_to);

    // Several replies to the same address all arrive, in order.
    for i in 0..5 {
        publish_with(
            &sch,
            "",
            &reply_to,
            format!("r{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    for i in 0..5 {
        assert_eq!(next(&mut replies).await.data, format!("r{i}").as_bytes());
    }
}

/// The server may reply in confirm mode; the reply is confirmed like any other publish.
async fn reply_from_confirm_channel(b: TestBroker) {
    let (_sconn, sch) = open(&b).await;
    let requests = fresh_queue(&sch, "rpc.requests").await;
    let mut server = consume(&sch, &requests, "", no_ack()).await;
    let (_cconn, cch) = open(&b).await;
    let mut replies = consume(&cch, REPLY_TO, "", no_ack()).await;
    publish_with(
        &cch,
        "",
        &requests,
        b"ping",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    let request = next(&mut server).await;
    let reply_to = request
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();

    let rch = _sconn.create_channel().await.expect("channel");
    rch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = rch
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            b"pong",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    assert!(within("confirm", confirm).await.expect("confirm").is_ack());
    assert_eq!(next(&mut replies).await.data, b"pong");
}

async fn consume_reply_to_without_no_ack_is_406(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let res = within(
        "basic.consume",
        ch.basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

/// Publishing with reply-to set to the pseudo-queue requires a reply-to consumer on the channel.
async fn publish_reply_to_without_consumer_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "rpc.noconsumer").await;
    let mut errors = Errors::watch(&conn);
    publish_with(
        &ch,
        "",
        &q,
        b"ping",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    assert_eq!(errors.next_code().await, code::PRECONDITION_FAILED);
}

/// The pseudo-queue "exists" for a passive declare, which RabbitMQ answers with 0 messages and
/// 1 consumer.
async fn passive_declare_of_reply_to(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let ok = within(
        "passive declare",
        ch.queue_declare(
            REPLY_TO.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare of amq.rabbitmq.reply-to");
    assert_eq!(ok.name().as_str(), REPLY_TO);
    assert_eq!((ok.message_count(), ok.consumer_count()), (0, 1));
}

/// A reply addressed to a channel that is gone is dropped without harming the replier.
async fn reply_to_closed_channel_is_dropped(b: TestBroker) {
    let (_sconn, sch) = open(&b).await;
    let requests = fresh_queue(&sch, "rpc.requests").await;
    let mut server = consume(&sch, &requests, "", no_ack()).await;
    let (cconn, cch) = open(&b).await;
    let _replies = consume(&cch, REPLY_TO, "", no_ack()).await;
    publish_with(
        &cch,
        "",
        &requests,
        b"ping",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    let reply_to = next(&mut server)
        .await
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let ok = within(
        "passive declare",
        sch.queue_declare(reply_to.as_str().into(), passive, FieldTable::default()),
    )
    .await
    .expect("a live reply-to address passively declares");
    assert_eq!((ok.message_count(), ok.consumer_count()), (0, 1));
    cconn.close(200, "gone".into()).await.expect("close");
    let pch = _sconn.create_channel().await.expect("channel");
    let res = within(
        "passive declare",
        pch.queue_declare(reply_to.as_str().into(), passive, FieldTable::default()),
    )
    .await;
    assert_code(res, code::NOT_FOUND);

    let rch = _sconn.create_channel().await.expect("channel");
    rch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = rch
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            b"late",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    assert!(within("confirm", confirm).await.expect("confirm").is_ack());
    assert!(rch.status().connected());
}

conformance!(
    request_reply_roundtrip,
    reply_from_confirm_channel,
    consume_reply_to_without_no_ack_is_406,
    publish_reply_to_without_consumer_is_406,
    passive_declare_of_reply_to,
    reply_to_closed_channel_is_dropped,
);
