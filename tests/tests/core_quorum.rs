//! amqp-core's quorum queues: `Queue::quorum` and `delivery_limit` reach the broker, a misuse is
//! refused before anything is sent, a quorum listener's dead-letter queue is a quorum queue, and
//! `#[rabbit_listener(quorum, delivery_limit = N)]` declares the same queue as the builder.

mod common;

use std::time::Duration;

use amqp_core::{
    Connection, ConnectionFactory, Error, Listener, ListenerDefinition, ListenerError, Queue,
    Retry, Template, rabbit_listener,
};
use common::within;
use tests::{TestBroker, conformance, unique};

async fn connect(b: &TestBroker) -> Connection {
    let factory = ConnectionFactory::new(b.url()).connection_name(unique("core.quorum"));
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

/// Deletes durable queues a test made (they would outlive it on a shared RabbitMQ).
async fn delete(b: &TestBroker, queues: &[&str]) {
    let conn = b.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    for q in queues {
        ch.queue_delete((*q).into(), Default::default())
            .await
            .expect("delete");
    }
    tests::close_quietly(&conn, "done").await;
}

/// A quorum queue that is not durable, is exclusive or auto-delete, and a delivery limit without
/// `quorum`, are configuration errors naming the queue: nothing reaches the broker.
async fn quorum_misuse_is_refused_before_declaring(b: TestBroker) {
    let conn = connect(&b).await;
    let q = unique("core.quorum.misuse");
    for (queue, says) in [
        (Queue::transient(&q).quorum(), "a quorum queue is durable"),
        (
            Queue::durable(&q).quorum().exclusive(),
            "a quorum queue is not exclusive",
        ),
        (
            Queue::durable(&q).quorum().auto_delete(),
            "a quorum queue is not auto-delete",
        ),
        (
            Queue::durable(&q).delivery_limit(3),
            "`delivery_limit` (x-delivery-limit) is for quorum queues",
        ),
    ] {
        match conn.declare(queue.clone()).await {
            Err(Error::Configuration(text)) => {
                assert!(
                    text.contains(&format!("queue '{q}'")) && text.contains(says),
                    "{text}"
                );
            }
            other => panic!("{queue:?}: expected a configuration error, got {other:?}"),
        }
    }
    // Nothing was declared: the name is free for a classic queue.
    conn.declare(Queue::transient(&q).auto_delete())
        .await
        .expect("the name is unused");
    conn.close().await;
}

/// `delivery_limit` is sent as `x-delivery-limit`: declaring the queue again with another limit
/// is the broker's 406 about that argument.
async fn delivery_limit_reaches_the_broker(b: TestBroker) {
    let conn = connect(&b).await;
    let q = unique("core.quorum.limit");
    conn.declare(Queue::durable(&q).quorum().delivery_limit(3))
        .await
        .expect("declare a quorum queue with a delivery limit");
    conn.declare(Queue::durable(&q).quorum().delivery_limit(3))
        .await
        .expect("the same declaration again is fine");
    match conn
        .declare(Queue::durable(&q).quorum().delivery_limit(4))
        .await
    {
        Err(Error::DeclarationConflict { name, detail, .. }) => {
            assert_eq!(name, q);
            assert!(detail.contains("x-delivery-limit"), "{detail}");
        }
        other => panic!("expected a conflict on x-delivery-limit, got {other:?}"),
    }
    conn.close().await;
    delete(&b, &[&q]).await;
}

/// A listener on a quorum queue with a retry policy declares `<queue>.dlq` as a quorum queue
/// (declaring it classic is then a conflict on `x-queue-type`), and a failed message lands there.
async fn quorum_listener_has_a_quorum_dlq(b: TestBroker) {
    let conn = connect(&b).await;
    let q = unique("core.quorum.work");
    let dlq = amqp_core::retry::dead_letter_queue(&q);
    conn.declare(Queue::durable(&q).quorum())
        .await
        .expect("declare");
    let listener = Listener::on(&q)
        .quorum()
        .retry(Retry::attempts(1))
        .handler(|_: String| async { Err::<(), _>(ListenerError::reject("no")) })
        .start(&conn)
        .await
        .expect("the listener starts");
    Template::new(conn.clone())
        .convert_and_send("", &q, "poison")
        .await
        .expect("send");
    let template = Template::new(conn.clone());
    let failed: Option<String> = within(
        "the failed message in the dlq",
        template.receive_and_convert(&dlq, Duration::from_secs(10)),
    )
    .await
    .expect("receive");
    assert_eq!(failed.as_deref(), Some("poison"));
    match conn.declare(Queue::durable(&dlq)).await {
        Err(Error::DeclarationConflict { name, detail, .. }) => {
            assert_eq!(name, dlq);
            assert!(detail.contains("x-queue-type"), "{detail}");
        }
        other => panic!("expected the dlq to be a quorum queue, got {other:?}"),
    }
    listener.shutdown().await;
    conn.close().await;
    delete(&b, &[&q, &dlq]).await;
}

conformance!(
    quorum_misuse_is_refused_before_declaring,
    delivery_limit_reaches_the_broker,
    quorum_listener_has_a_quorum_dlq
);

#[rabbit_listener(
    queue = "core.quorum.macro",
    id = "quorum_macro",
    quorum,
    delivery_limit = 3
)]
async fn quorum_macro(text: String) {
    let _ = text;
}

/// The attribute's `quorum, delivery_limit = 3` is the builder's `.quorum().delivery_limit(3)`.
#[test]
fn the_macro_declares_what_the_builder_does() {
    let definition = ListenerDefinition::all()
        .into_iter()
        .find(|d| d.id == "quorum_macro")
        .expect("registered");
    assert!(definition.is_quorum());
    assert_eq!(
        definition.declarations(),
        vec![
            Queue::durable("core.quorum.macro")
                .quorum()
                .delivery_limit(3)
                .into()
        ]
    );
}
