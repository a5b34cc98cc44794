//! amqp-core's Template: conversion and default properties, confirms, returns, nacks, timeouts,
//! receive, and request/reply, on the bundled broker and on RabbitMQ.

mod common;

use std::time::Duration;

use amqp_core::{Connection, ConnectionFactory, Error, Listener, ListenerError, Template};
use common::{delete_queue, fresh_queue, get, open, shared_queue, within};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tests::proxy::Proxy;
use tests::{TestBroker, conformance, unique};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

fn order(id: u64) -> Order {
    Order {
        id,
        item: format!("item-{id}"),
    }
}

async fn connect(url: &str) -> Connection {
    let factory = ConnectionFactory::new(url).connection_name(unique("core.template"));
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

/// convert_and_send writes JSON with content type, type header, message id, timestamp and
/// persistent delivery; receive_and_convert reads it back.
async fn convert_and_send_sets_the_properties(b: TestBroker) {
    let (_raw, ch) = open(&b).await;
    // Not exclusive: the template's own connection reads from it too.
    let q = shared_queue(&ch, "core.props").await;
    let template = Template::new(connect(b.url()).await);
    within("send", template.convert_and_send("", &q, &order(1)))
        .await
        .expect("send");
    let d = within("get", async {
        loop {
            if let Some(d) = get(&ch, &q).await {
                break d;
            }
        }
    })
    .await;
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(p.delivery_mode(), &Some(2));
    assert!(
        p.message_id()
            .as_ref()
            .is_some_and(|id| id.as_str().len() >= 32),
        "{p:?}"
    );
    assert!(p.timestamp().is_some_and(|t| t > 1_600_000_000), "{p:?}");
    let type_id = p
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("__TypeId__").cloned());
    assert!(
        matches!(&type_id, Some(AMQPValue::LongString(s)) if String::from_utf8_lossy(s.as_bytes()).ends_with("Order")),
        "{type_id:?}"
    );
    assert_eq!(serde_json::from_slice::<Order>(&d.data).unwrap(), order(1));

    within("send", template.convert_and_send("", &q, &order(2)))
        .await
        .expect("send");
    let back: Option<Order> = within(
        "receive",
        template.receive_and_convert(&q, Duration::from_secs(2)),
    )
    .await
    .expect("receive");
    assert_eq!(back, Some(order(2)));
    let none: Option<Order> = within(
        "receive",
        template.receive_and_convert(&q, Duration::from_millis(100)),
    )
    .await
    .expect("receive");
    assert_eq!(none, None, "an empty queue gives None after the timeout");
    delete_queue(&ch, &q).await;
}

/// Unroutable: dropped silently by default (as in Spring), an error naming the exchange and
/// routing key with `mandatory(true)`.
async fn unroutable_is_returned_when_mandatory(b: TestBroker) {
    let template = Template::new(connect(b.url()).await);
    let nowhere = unique("core.nowhere");
    within("send", template.convert_and_send("", &nowhere, &order(1)))
        .await
        .expect("not mandatory: ok");
    let mandatory = template.clone().mandatory(true);
    let err = within("send", mandatory.convert_and_send("", &nowhere, &order(1)))
        .await
        .unwrap_err();
    match &err {
        Error::Returned {
            exchange,
            routing_key,
            reply_code,
            ..
        } => {
            assert_eq!(
                (exchange.as_str(), routing_key.as_str(), *reply_code),
                ("", nowhere.as_str(), 312)
            );
        }
        other => panic!("expected Returned, got {other:?}"),
    }
    assert!(err.to_string().contains(&nowhere), "{err}");
}

/// A queue that refuses the message (x-overflow reject-publish) makes the send fail as Nacked.
async fn a_broker_nack_is_an_error(b: TestBroker) {
    let (_raw, ch) = open(&b).await;
    let q = unique("core.full");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let opts = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within("declare", ch.queue_declare(q.as_str().into(), opts, args))
        .await
        .expect("declare");
    let template = Template::new(connect(b.url()).await);
    within("send", template.convert_and_send("", &q, &order(1)))
        .await
        .expect("first fits");
    let err = within("send", template.convert_and_send("", &q, &order(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Nacked { routing_key, .. } if *routing_key == q),
        "{err:?}"
    );
}

/// Publishing to a missing exchange fails with the broker's 404, and the template recovers
/// (opens a new channel) for the next send.
async fn a_missing_exchange_fails_and_the_template_recovers(b: TestBroker) {
    let (_raw, ch) = open(&b).await;
    let q = fresh_queue(&ch, "core.after404").await;
    let template = Template::new(connect(b.url()).await);
    let missing = unique("core.missing");
    let err = within("send", template.convert_and_send(&missing, "k", &order(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Publish { ref exchange, .. } if *exchange == missing),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("404")
            || format!("{err:?}").contains("404")
            || err.to_string().contains("NOT_FOUND"),
        "{err}"
    );
    within("send", template.convert_and_send("", &q, &order(2)))
        .await
        .expect("the next send works");
}

/// Many sends in flight at once all complete (their confirms are pipelined on one channel).
async fn concurrent_sends_all_confirm(b: TestBroker) {
    let (_raw, ch) = open(&b).await;
    let q = fresh_queue(&ch, "core.many").await;
    let template = Template::new(connect(b.url()).await);
    let sends = (0..2000).map(|i| {
        let t = template.clone();
        let q = q.clone();
        async move { t.convert_and_send("", &q, &order(i)).await }
    });
    let results = within("2000 sends", futures::future::join_all(sends)).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = within(
        "passive",
        ch.queue_declare(q.as_str().into(), passive, FieldTable::default()),
    )
    .await
    .expect("passive declare")
    .message_count();
    assert_eq!(count, 2000);
}

/// A broker that stops answering makes the send fail with ConfirmTimeout, not hang.
async fn a_silent_broker_times_out_the_confirm(b: TestBroker) {
    let proxy = Proxy::start(&b.addr()).await;
    let conn = connect(&b.url_via(proxy.addr())).await;
    let (_raw, ch) = open(&b).await;
    let q = fresh_queue(&ch, "core.silent").await;
    let template = Template::new(conn).confirm_timeout(Duration::from_millis(500));
    within("send", template.convert_and_send("", &q, &order(1)))
        .await
        .expect("works while forwarding");
    proxy.freeze();
    let err = within("send", template.convert_and_send("", &q, &order(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConfirmTimeout { .. }), "{err:?}");
    proxy.forward();
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Quote {
    id: u64,
    price: u64,
}

/// Request/reply over direct reply-to: a listener whose handler returns a value is an RPC
/// server; replies match their requests; a request nobody answers times out; nothing is left
/// pending either way.
async fn request_reply(b: TestBroker) {
    let conn = connect(b.url()).await;
    let server_queue = unique("core.rpc");
    conn.declare(amqp_core::Queue::transient(&server_queue).auto_delete())
        .await
        .expect("declare");
    let server = Listener::on(&server_queue)
        .handler(|o: Order| async move {
            Ok::<_, ListenerError>(Quote {
                id: o.id,
                price: o.id * 10,
            })
        })
        .start(&conn)
        .await
        .expect("listener");
    let template = Template::new(conn.clone());
    let calls = (1..=20).map(|i| {
        let t = template.clone();
        let q = server_queue.clone();
        async move {
            t.convert_send_and_receive::<Order, Quote>("", &q, &order(i), Duration::from_secs(5))
                .await
        }
    });
    let replies = within("20 requests", futures::future::join_all(calls)).await;
    for (i, r) in replies.into_iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!(
            r.expect("reply"),
            Quote {
                id: i,
                price: i * 10
            }
        );
    }
    assert_eq!(template.pending_requests(), 0);

    // A queue whose consumer never answers (acks without replying: it returns ()).
    let silent_queue = unique("core.rpc.silent");
    conn.declare(amqp_core::Queue::transient(&silent_queue).auto_delete())
        .await
        .expect("declare");
    let silent = Listener::on(&silent_queue)
        .handler(|_: Order| async { Ok::<_, ListenerError>(()) })
        .start(&conn)
        .await
        .expect("listener");
    let err = within(
        "request",
        template.convert_send_and_receive::<Order, Quote>(
            "",
            &silent_queue,
            &order(1),
            Duration::from_millis(300),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::ReplyTimeout { .. }), "{err:?}");
    assert_eq!(
        template.pending_requests(),
        0,
        "a timed-out request leaves nothing behind"
    );

    // No queue at all: the request comes back at once instead of timing out.
    let err = within(
        "request",
        template.convert_send_and_receive::<Order, Quote>(
            "",
            &unique("core.rpc.none"),
            &order(1),
            Duration::from_secs(30),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Returned { .. }), "{err:?}");
    assert_eq!(template.pending_requests(), 0);
    server.shutdown().await;
    silent.shutdown().await;
    conn.close().await;
}

conformance!(
    convert_and_send_sets_the_properties,
    unroutable_is_returned_when_mandatory,
    a_broker_nack_is_an_error,
    a_missing_exchange_fails_and_the_template_recovers,
    concurrent_sends_all_confirm,
    a_silent_broker_times_out_the_confirm,
    request_reply,
);
