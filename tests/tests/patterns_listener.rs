//! Listener reliability patterns built with `ListenerBuilder`: a rate limit spreads a burst over
//! time while publishing goes at full speed, and a circuit breaker stops consuming for a cool-down
//! when the failure ratio passes its threshold, then resumes. On the bundled broker and RabbitMQ.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amqp_core::{
    CircuitBreaker, Connection, ConnectionFactory, Listener, ListenerError, Queue, Rate, Template,
};
use common::within;
use tests::{TestBroker, conformance, unique};

async fn connect(b: &TestBroker) -> Connection {
    let factory = ConnectionFactory::new(b.url()).connection_name(unique("patterns.listener"));
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(limit, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// 50 messages at 100/s over 4 consumers take about half a second to handle (evenly spaced,
/// not in a burst), while all 50 are published long before that.
async fn a_burst_is_consumed_at_the_rate(b: TestBroker) {
    let conn = connect(&b).await;
    let q = unique("patterns.rate");
    conn.declare(Queue::transient(&q)).await.expect("declare");
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let listener = Listener::on(&q)
        .concurrency(4)
        .prefetch(50)
        .rate(Rate::per_second(100))
        .handler(move |_n: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ListenerError>(()) }
        })
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    let started = Instant::now();
    let sends = (0..50u32).map(|n| {
        let template = template.clone();
        let q = q.clone();
        async move { template.convert_and_send("", &q, &n).await }
    });
    for sent in futures::future::join_all(sends).await {
        sent.expect("send");
    }
    let published_in = started.elapsed();
    let handled_when_published = handled.load(Ordering::SeqCst);
    assert!(
        handled_when_published < 30,
        "publishing took {published_in:?}, and {handled_when_published} messages were handled by then: the rate held up the publisher?"
    );
    wait_until("50 handled", Duration::from_secs(5), || {
        handled.load(Ordering::SeqCst) == 50
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "50 messages at 100/s were handled in {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "{took:?}: far slower than the rate"
    );
    listener.shutdown().await;
    conn.close().await;
}

/// Failures pass the ratio: the listener stops consuming (the rest stays in the queue) for the
/// cool-down, then resumes and handles the rest once its dependency is back.
async fn the_breaker_pauses_then_resumes(b: TestBroker) {
    let conn = connect(&b).await;
    let (q, dlq) = tests::work_queue_with_dlq(&conn, "patterns.breaker").await;
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (h, c) = (healthy.clone(), calls.clone());
    let cool_down = Duration::from_millis(1500);
    let listener = Listener::on(&q)
        .prefetch(1)
        .circuit_breaker(
            CircuitBreaker::new()
                .failure_ratio(0.5)
                .min_calls(4)
                .window(Duration::from_secs(10))
                .cool_down(cool_down),
        )
        .handler(move |n: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            let ok = h.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(ListenerError::reject(format!("the database is down ({n})")))
                }
            }
        })
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    for n in 0..10u32 {
        template.convert_and_send("", &q, &n).await.expect("send");
    }
    wait_until("4 failed calls", Duration::from_secs(5), || {
        calls.load(Ordering::SeqCst) >= 4
    })
    .await;
    let tripped = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the breaker is open: no more calls during the cool-down"
    );
    assert_eq!(
        common::ready(&b, &q).await,
        6,
        "the rest waits in the queue"
    );
    healthy.store(true, Ordering::SeqCst);
    wait_until("the other 6 handled", Duration::from_secs(5), || {
        calls.load(Ordering::SeqCst) >= 10
    })
    .await;
    let resumed_after = tripped.elapsed();
    assert!(
        resumed_after >= cool_down - Duration::from_millis(200),
        "resumed {resumed_after:?} after tripping, within the {cool_down:?} cool-down"
    );
    tokio::time::sleep(common::QUIET).await;
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    listener.shutdown().await;
    assert_eq!(common::ready(&b, &q).await, 0);
    assert_eq!(
        common::ready(&b, &dlq).await,
        4,
        "the 4 failures were dead-lettered"
    );
    conn.close().await;
}

conformance!(
    a_burst_is_consumed_at_the_rate,
    the_breaker_pauses_then_resumes
);
