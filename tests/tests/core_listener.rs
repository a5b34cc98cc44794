//! amqp-core's listener container: acknowledgement by the handler's result, dead-lettering of
//! failures, undecodable payloads and panics, fair dispatch, concurrency, ack modes and graceful
//! shutdown, on the bundled broker and on RabbitMQ.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amqp_core::{
    AckMode, Binding, Connection, ConnectionFactory, Exchange, Listener, ListenerError, Message,
    Metadata, Queue, Template,
};
use common::within;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use tests::{TestBroker, conformance, unique};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    fail: bool,
}

fn job(id: u64) -> Job {
    Job { id, fail: false }
}

async fn connect(b: &TestBroker) -> Connection {
    let factory = ConnectionFactory::new(b.url()).connection_name(unique("core.listener"));
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

async fn plain_queue(conn: &Connection) -> String {
    let q = unique("core.q");
    conn.declare(Queue::transient(&q)).await.expect("declare");
    q
}

async fn delete(b: &TestBroker, q: &str) {
    let (_c, ch) = common::open(b).await;
    common::delete_queue(&ch, q).await;
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    within("a handled message", rx.recv())
        .await
        .expect("the sender lives")
}

/// Ok acks; Err rejects to the dead-letter queue; an undecodable body and a panic are rejected
/// the same way; the listener keeps handling what follows.
async fn failures_are_dead_lettered_and_the_listener_goes_on(b: TestBroker) {
    let conn = connect(&b).await;
    let (q, dlq) = tests::work_queue_with_dlq(&conn, "core.work").await;
    let (tx, mut handled) = mpsc::unbounded_channel();
    let listener = Listener::on(&q)
        .prefetch(1)
        .handler(move |j: Job| {
            let tx = tx.clone();
            async move {
                if j.id == 3 {
                    panic!("job 3 panics");
                }
                tx.send(j.id).ok();
                if j.fail {
                    Err(ListenerError::reject(format!("job {} failed", j.id)))
                } else {
                    Ok(())
                }
            }
        })
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    template
        .convert_and_send("", &q, &job(1))
        .await
        .expect("send");
    template
        .convert_and_send("", &q, &Job { id: 2, fail: true })
        .await
        .expect("send");
    template
        .send("", &q, Message::new(&b"{not json"[..]))
        .await
        .expect("send");
    template
        .convert_and_send("", &q, &job(3))
        .await
        .expect("send");
    template
        .convert_and_send("", &q, &job(4))
        .await
        .expect("send");
    assert_eq!(recv(&mut handled).await, 1);
    assert_eq!(recv(&mut handled).await, 2);
    assert_eq!(
        recv(&mut handled).await,
        4,
        "the undecodable body and the panic did not stop it"
    );

    let mut dead = Vec::new();
    within("three dead letters", async {
        while dead.len() < 3 {
            match template
                .receive(&dlq, Duration::from_millis(100))
                .await
                .expect("receive")
            {
                Some(m) => dead.push(String::from_utf8_lossy(&m.body).into_owned()),
                None => continue,
            }
        }
    })
    .await;
    assert!(dead.iter().any(|d| d.contains("\"id\":2")), "{dead:?}");
    assert!(dead.iter().any(|d| d == "{not json"), "{dead:?}");
    assert!(dead.iter().any(|d| d.contains("\"id\":3")), "{dead:?}");
    listener.shutdown().await;
    assert_eq!(common::ready(&b, &q).await, 0, "everything was settled");
    delete(&b, &q).await;
    delete(&b, &dlq).await;
    conn.close().await;
}

/// `ListenerError::requeue` puts the message back; it comes again, marked redelivered.
async fn requeue_errors_redeliver(b: TestBroker) {
    let conn = connect(&b).await;
    let q = plain_queue(&conn).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let listener = Listener::on(&q)
        .handler_with_metadata(move |j: Job, meta: Metadata| {
            let tx = tx.clone();
            async move {
                tx.send((j.id, meta.redelivered)).ok();
                if meta.redelivered {
                    Ok(())
                } else {
                    Err(ListenerError::requeue("not yet"))
                }
            }
        })
        .start(&conn)
        .await
        .expect("start");
    Template::new(conn.clone())
        .convert_and_send("", &q, &job(7))
        .await
        .expect("send");
    assert_eq!(recv(&mut seen).await, (7, false));
    assert_eq!(recv(&mut seen).await, (7, true));
    listener.shutdown().await;
    assert_eq!(common::ready(&b, &q).await, 0);
    delete(&b, &q).await;
    conn.close().await;
}

/// With prefetch 1, a fast and a slow consumer share a queue by speed: "the one who can do
/// more, does more".
async fn fair_dispatch_follows_speed(b: TestBroker) {
    let conn = connect(&b).await;
    let q = plain_queue(&conn).await;
    let fast = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let start = |count: Arc<AtomicUsize>, pause: Duration| {
        let done_tx = done_tx.clone();
        Listener::on(&q).prefetch(1).handler(move |_: Job| {
            let count = count.clone();
            let done_tx = done_tx.clone();
            async move {
                tokio::time::sleep(pause).await;
                count.fetch_add(1, Ordering::SeqCst);
                done_tx.send(()).ok();
                Ok::<_, ListenerError>(())
            }
        })
    };
    let slow_listener = start(slow.clone(), Duration::from_millis(200))
        .start(&conn)
        .await
        .expect("start");
    let fast_listener = start(fast.clone(), Duration::from_millis(5))
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    for i in 0..30 {
        template
            .convert_and_send("", &q, &job(i))
            .await
            .expect("send");
    }
    for _ in 0..30 {
        recv(&mut done).await;
    }
    let (fast, slow) = (fast.load(Ordering::SeqCst), slow.load(Ordering::SeqCst));
    assert!(fast >= 3 * slow.max(1), "fast {fast}, slow {slow}");
    slow_listener.shutdown().await;
    fast_listener.shutdown().await;
    delete(&b, &q).await;
    conn.close().await;
}

/// `concurrency(n)` is n consumers, each on its own channel.
async fn concurrency_is_consumers(b: TestBroker) {
    let conn = connect(&b).await;
    let q = plain_queue(&conn).await;
    let listener = Listener::on(&q)
        .concurrency(3)
        .handler(|_: Job| async { Ok::<_, ListenerError>(()) })
        .start(&conn)
        .await
        .expect("start");
    let (_c, ch) = common::open(&b).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let consumers = within(
        "passive",
        ch.queue_declare(q.as_str().into(), passive, FieldTable::default()),
    )
    .await
    .expect("passive")
    .consumer_count();
    assert_eq!(consumers, 3);
    listener.shutdown().await;
    delete(&b, &q).await;
    conn.close().await;
}

/// Graceful shutdown: the in-flight handler finishes and is acked; what was not handled yet
/// stays in the queue.
async fn shutdown_finishes_in_flight_work_and_leaves_the_rest(b: TestBroker) {
    let conn = connect(&b).await;
    let q = plain_queue(&conn).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let finished = Arc::new(AtomicUsize::new(0));
    let done = finished.clone();
    let listener = Listener::on(&q)
        .prefetch(2)
        .handler(move |j: Job| {
            let started_tx = started_tx.clone();
            let done = done.clone();
            async move {
                started_tx.send(j.id).ok();
                tokio::time::sleep(Duration::from_millis(400)).await;
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ListenerError>(())
            }
        })
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    for i in 0..5 {
        template
            .convert_and_send("", &q, &job(i))
            .await
            .expect("send");
    }
    assert_eq!(recv(&mut started).await, 0);
    within("shutdown", listener.shutdown()).await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the in-flight handler ran to the end"
    );
    let left = within("the rest back in the queue", async {
        loop {
            let n = common::ready(&b, &q).await;
            if n == 4 {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(left, 4);
    delete(&b, &q).await;
    conn.close().await;
}

/// Manual mode: the handler acks through the metadata; what it does not ack goes back to the
/// queue when the listener stops. `none` mode: nothing is acked and nothing comes back.
async fn manual_and_none_ack_modes(b: TestBroker) {
    let conn = connect(&b).await;
    let q = plain_queue(&conn).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let listener = Listener::on(&q)
        .ack_mode(AckMode::Manual)
        .handler_with_metadata(move |j: Job, meta: Metadata| {
            let tx = tx.clone();
            async move {
                if j.id.is_multiple_of(2) {
                    meta.acker()
                        .expect("manual mode has an acker")
                        .ack()
                        .await?;
                }
                tx.send(j.id).ok();
                Ok::<_, ListenerError>(())
            }
        })
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    for i in 0..4 {
        template
            .convert_and_send("", &q, &job(i))
            .await
            .expect("send");
    }
    for _ in 0..4 {
        recv(&mut seen).await;
    }
    listener.shutdown().await;
    let left = within("the unacked back", async {
        loop {
            let n = common::ready(&b, &q).await;
            if n == 2 {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(left, 2, "the two odd ones were never acked");

    let (tx, mut seen) = mpsc::unbounded_channel();
    let none = Listener::on(&q)
        .ack_mode(AckMode::None)
        .handler(move |j: Job| {
            let tx = tx.clone();
            async move {
                tx.send(j.id).ok();
                Ok::<_, ListenerError>(())
            }
        })
        .start(&conn)
        .await
        .expect("start");
    let mut ids = vec![recv(&mut seen).await, recv(&mut seen).await];
    ids.sort();
    assert_eq!(ids, [1, 3]);
    none.shutdown().await;
    assert_eq!(
        common::ready(&b, &q).await,
        0,
        "no-ack deliveries are gone once sent"
    );
    delete(&b, &q).await;
    conn.close().await;
}

/// The metadata a handler sees: routing key, exchange, headers and message id.
async fn handlers_see_the_metadata(b: TestBroker) {
    let conn = connect(&b).await;
    let exchange = unique("core.meta.x");
    let q = unique("core.meta.q");
    conn.declare(vec![
        Exchange::topic(&exchange)
            .durable(false)
            .auto_delete(true)
            .into(),
        Queue::transient(&q).auto_delete().into(),
        Binding::queue(&q).to(&exchange).key("login.*").into(),
    ])
    .await
    .expect("declare");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let listener = Listener::on(&q)
        .handler_with_metadata(move |j: Job, meta: Metadata| {
            let tx = tx.clone();
            async move {
                tx.send((j, meta)).ok();
                Ok::<_, ListenerError>(())
            }
        })
        .start(&conn)
        .await
        .expect("start");
    Template::new(conn.clone())
        .convert_and_send(&exchange, "login.ok", &job(9))
        .await
        .expect("send");
    let (j, meta) = recv(&mut seen).await;
    assert_eq!(j, job(9));
    assert_eq!(
        (
            meta.exchange.as_str(),
            meta.routing_key.as_str(),
            meta.queue.as_str()
        ),
        (exchange.as_str(), "login.ok", q.as_str())
    );
    assert!(meta.message_id().is_some());
    assert!(meta.header(amqp_core::TYPE_ID_HEADER).is_some());
    assert!(!meta.redelivered);
    assert!(meta.acker().is_none(), "auto mode acks for the handler");
    listener.shutdown().await;
    conn.close().await;
}

/// Starting a listener on a queue that does not exist fails with the broker's answer.
async fn a_missing_queue_fails_the_start(b: TestBroker) {
    let conn = connect(&b).await;
    let err = Listener::on(unique("core.absent"))
        .handler(|_: Job| async { Ok::<_, ListenerError>(()) })
        .start(&conn)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("404") || err.to_string().contains("NOT_FOUND"),
        "{err}"
    );
    conn.close().await;
}

conformance!(
    failures_are_dead_lettered_and_the_listener_goes_on,
    requeue_errors_redeliver,
    fair_dispatch_follows_speed,
    concurrency_is_consumers,
    shutdown_finishes_in_flight_work_and_leaves_the_rest,
    manual_and_none_ack_modes,
    handlers_see_the_metadata,
    a_missing_queue_fails_the_start,
);
