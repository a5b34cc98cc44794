//! Retry with back-off through the broker (`Listener::retry`): a failing message is re-published
//! with a growing delay and the attempt count in `x-retry-attempt`, then acked; when attempts are
//! spent, or the error is permanent, it lands in `<queue>.dlq` with the error in headers. Each
//! scenario runs with the detected delay mechanism (the bundled broker's delayed exchange;
//! RabbitMQ's TTL wait queues) and again with the wait queues forced, on both brokers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_core::retry::{
    ATTEMPT_HEADER, EXCEPTION_MESSAGE_HEADER, EXCEPTION_TYPE_HEADER, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER, dead_letter_queue,
};
use amqp_core::types::AMQPValue;
use amqp_core::{
    AckMode, Binding, Connection, ConnectionFactory, DelayMechanism, Disposition, ErrorDisposition,
    Exchange, Listener, ListenerError, Message, Metadata, Queue, Retry, Template,
};
use common::{QUIET, within};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tests::{TestBroker, conformance, unique};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payment {
    id: u64,
}

/// A failure the handler's type classifies ([`ErrorDisposition`]).
#[derive(Debug)]
enum PaymentError {
    GatewayDown,
    CardDeclined,
}

impl std::fmt::Display for PaymentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PaymentError::GatewayDown => f.write_str("payment gateway down"),
            PaymentError::CardDeclined => f.write_str("card declined"),
        }
    }
}

impl std::error::Error for PaymentError {}

impl ErrorDisposition for PaymentError {
    fn disposition(&self) -> Disposition {
        match self {
            PaymentError::GatewayDown => Disposition::Retry,
            PaymentError::CardDeclined => Disposition::Reject,
        }
    }
}

async fn connect(b: &TestBroker, mechanism: DelayMechanism) -> Connection {
    let factory = ConnectionFactory::new(b.url())
        .connection_name(unique("core.retry"))
        .delay_mechanism(mechanism);
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

/// A work queue bound to a direct exchange of its own (so the original exchange and routing
/// key are worth recording); returns (exchange, queue).
async fn work_queue(conn: &Connection) -> (String, String) {
    let exchange = unique("core.retry.x");
    let queue = unique("core.retry.q");
    conn.declare(vec![
        Exchange::direct(&exchange)
            .durable(false)
            .auto_delete(true)
            .into(),
        Queue::transient(&queue).into(),
        Binding::queue(&queue).to(&exchange).key("pay").into(),
    ])
    .await
    .expect("declare");
    (exchange, queue)
}

/// Deletes what a test declared, the retry wait queues included (they would expire anyway).
async fn clean_up(b: &TestBroker, exchange: &str, queue: &str, retry: &Retry) {
    let (_c, ch) = common::open(b).await;
    let mut queues = vec![queue.to_owned(), dead_letter_queue(queue)];
    for n in 1..retry.max_attempts() {
        queues.push(format!(
            "{queue}.retry.{}",
            retry.delay_after(n).as_millis()
        ));
    }
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// When each call happened, and the attempt header it saw.
type Calls = Arc<Mutex<Vec<(Instant, Option<AMQPValue>)>>>;

fn record(calls: &Calls, meta: &Metadata) -> usize {
    let mut calls = calls.lock();
    calls.push((Instant::now(), meta.header(ATTEMPT_HEADER).cloned()));
    calls.len()
}

async fn wait_for_calls(calls: &Calls, n: usize) {
    within(&format!("{n} handler calls"), async {
        while calls.lock().len() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn header_str(message: &Message, name: &str) -> String {
    let headers = message.properties.headers().clone().unwrap_or_default();
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: expected a string, got {other:?}"),
    }
}

fn header_int(message: &Message, name: &str) -> i64 {
    let headers = message.properties.headers().clone().unwrap_or_default();
    match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => (*n).into(),
        other => panic!("header {name}: expected an integer, got {other:?}"),
    }
}

/// Fails twice, then succeeds: three calls with growing gaps, acked in the end, nothing in the
/// dlq, and the attempt header counts up.
async fn fails_twice_then_succeeds(b: &TestBroker, mechanism: DelayMechanism) {
    let conn = connect(b, mechanism).await;
    let (exchange, queue) = work_queue(&conn).await;
    let retry = Retry::attempts(5)
        .initial(Duration::from_millis(300))
        .multiplier(3.0)
        .max(Duration::from_secs(10));
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let listener = Listener::on(&queue)
        .prefetch(1)
        .retry(retry)
        .handler_with_metadata(move |p: Payment, meta: Metadata| {
            let call = record(&seen, &meta);
            async move {
                assert_eq!(p.id, 7);
                if call <= 2 {
                    return Err(std::io::Error::other("payment gateway down").into());
                }
                Ok::<_, ListenerError>(())
            }
        })
        .start(&conn)
        .await
        .expect("listener starts");
    let template = Template::new(conn.clone());
    template
        .convert_and_send(&exchange, "pay", &Payment { id: 7 })
        .await
        .expect("send");

    wait_for_calls(&calls, 3).await;
    tokio::time::sleep(QUIET).await;
    let calls = calls.lock().clone();
    assert_eq!(calls.len(), 3, "called exactly three times");
    let first_gap = calls[1].0 - calls[0].0;
    let second_gap = calls[2].0 - calls[1].0;
    assert!(
        first_gap >= Duration::from_millis(280),
        "the first retry waits the initial delay: {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(850) && second_gap > first_gap,
        "the gaps grow (300 ms, then 900 ms): {first_gap:?}, {second_gap:?}"
    );
    let attempts: Vec<_> = calls.iter().map(|(_, h)| h.clone()).collect();
    assert_eq!(
        attempts,
        [
            None,
            Some(AMQPValue::LongLongInt(1)),
            Some(AMQPValue::LongLongInt(2))
        ]
    );
    listener.shutdown().await;
    assert_eq!(
        common::ready(b, &queue).await,
        0,
        "acked: the queue is empty"
    );
    assert_eq!(
        common::ready(b, &dead_letter_queue(&queue)).await,
        0,
        "nothing in the dlq"
    );
    clean_up(b, &exchange, &queue, &retry).await;
    conn.close().await;
}

/// Always fails: `max_attempts` calls, then the message is in `<queue>.dlq` with the error,
/// its type, where it was first published, and the attempt count.
async fn always_failing_ends_in_the_dlq(b: &TestBroker, mechanism: DelayMechanism) {
    let conn = connect(b, mechanism).await;
    let (exchange, queue) = work_queue(&conn).await;
    let retry = Retry::attempts(3)
        .initial(Duration::from_millis(100))
        .multiplier(2.0);
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let listener = Listener::on(&queue)
        .retry(retry)
        .handler_with_metadata(move |_: Payment, meta: Metadata| {
            record(&seen, &meta);
            async move { Err::<(), _>(ListenerError::classify(PaymentError::GatewayDown)) }
        })
        .start(&conn)
        .await
        .expect("listener starts");
    let template = Template::new(conn.clone());
    template
        .convert_and_send(&exchange, "pay", &Payment { id: 8 })
        .await
        .expect("send");

    let dlq = dead_letter_queue(&queue);
    let dead = template
        .receive(&dlq, Duration::from_secs(5))
        .await
        .expect("receive")
        .expect("the message reaches the dlq");
    tokio::time::sleep(QUIET).await;
    assert_eq!(calls.lock().len(), 3, "max_attempts calls, no more");
    assert_eq!(header_int(&dead, ATTEMPT_HEADER), 3);
    assert_eq!(
        header_str(&dead, EXCEPTION_MESSAGE_HEADER),
        "payment gateway down"
    );
    assert!(
        header_str(&dead, EXCEPTION_TYPE_HEADER).ends_with("PaymentError"),
        "{}",
        header_str(&dead, EXCEPTION_TYPE_HEADER)
    );
    assert_eq!(header_str(&dead, ORIGINAL_EXCHANGE_HEADER), exchange);
    assert_eq!(header_str(&dead, ORIGINAL_ROUTING_KEY_HEADER), "pay");
    let payment: Payment = serde_json::from_slice(&dead.body).expect("the body is intact");
    assert_eq!(payment, Payment { id: 8 });
    listener.shutdown().await;
    assert_eq!(common::ready(b, &queue).await, 0);
    clean_up(b, &exchange, &queue, &retry).await;
    conn.close().await;
}

/// A permanent error (`ListenerError::reject`, an `ErrorDisposition` saying `Reject`, a body
/// that does not convert) goes to the dlq at once, after one call.
async fn permanent_errors_skip_the_retries(b: &TestBroker, mechanism: DelayMechanism) {
    let conn = connect(b, mechanism).await;
    let (exchange, queue) = work_queue(&conn).await;
    let retry = Retry::attempts(5).initial(Duration::from_millis(100));
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let listener = Listener::on(&queue)
        .retry(retry)
        .handler_with_metadata(move |p: Payment, meta: Metadata| {
            record(&seen, &meta);
            async move {
                if p.id == 1 {
                    return Err(ListenerError::reject("unknown account"));
                }
                Err::<(), _>(ListenerError::classify(PaymentError::CardDeclined))
            }
        })
        .start(&conn)
        .await
        .expect("listener starts");
    let template = Template::new(conn.clone());
    let dlq = dead_letter_queue(&queue);
    let expected = [
        (1, "unknown account", "&str"),
        (2, "card declined", "PaymentError"),
    ];
    for (id, text, type_suffix) in expected {
        template
            .convert_and_send(&exchange, "pay", &Payment { id })
            .await
            .expect("send");
        let dead = template
            .receive(&dlq, Duration::from_secs(5))
            .await
            .expect("receive")
            .expect("the message reaches the dlq");
        assert_eq!(header_int(&dead, ATTEMPT_HEADER), 1);
        assert_eq!(header_str(&dead, EXCEPTION_MESSAGE_HEADER), text);
        assert!(header_str(&dead, EXCEPTION_TYPE_HEADER).ends_with(type_suffix));
    }
    template
        .send(&exchange, "pay", Message::new("not json"))
        .await
        .expect("send");
    let dead = template
        .receive(&dlq, Duration::from_secs(5))
        .await
        .expect("receive")
        .expect("the undecodable message reaches the dlq");
    assert_eq!(dead.body, b"not json");
    assert_eq!(
        header_str(&dead, EXCEPTION_TYPE_HEADER),
        "amqp_core::error::Error"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        calls.lock().len(),
        2,
        "one call each; the undecodable one none"
    );
    listener.shutdown().await;
    clean_up(b, &exchange, &queue, &retry).await;
    conn.close().await;
}

async fn retry_succeeds_after_two_failures(b: TestBroker) {
    fails_twice_then_succeeds(&b, DelayMechanism::Auto).await;
}

async fn retry_succeeds_after_two_failures_with_wait_queues(b: TestBroker) {
    fails_twice_then_succeeds(&b, DelayMechanism::WaitQueues).await;
}

async fn retry_spent_goes_to_the_dlq(b: TestBroker) {
    always_failing_ends_in_the_dlq(&b, DelayMechanism::Auto).await;
}

async fn retry_spent_goes_to_the_dlq_with_wait_queues(b: TestBroker) {
    always_failing_ends_in_the_dlq(&b, DelayMechanism::WaitQueues).await;
}

async fn retry_permanent_errors_go_straight_to_the_dlq(b: TestBroker) {
    permanent_errors_skip_the_retries(&b, DelayMechanism::Auto).await;
}

async fn retry_permanent_errors_with_wait_queues(b: TestBroker) {
    permanent_errors_skip_the_retries(&b, DelayMechanism::WaitQueues).await;
}

/// Detection picks the delayed exchange on the bundled broker and wait queues on a RabbitMQ
/// without the plugin, and asking does not harm the application's connection (RabbitMQ closes
/// the connection an unknown exchange type is declared on, so the probe has its own).
async fn delay_mechanism_is_detected(b: TestBroker) {
    let conn = connect(&b, DelayMechanism::Auto).await;
    let expected = if b.is_bundled() {
        DelayMechanism::DelayedExchange
    } else {
        DelayMechanism::WaitQueues
    };
    assert_eq!(conn.delay_mechanism().await.expect("detects"), expected);
    assert_eq!(conn.delay_mechanism().await.expect("remembers"), expected);
    assert!(
        conn.is_connected(),
        "the application's connection is untouched"
    );
    let q = unique("core.retry.after-probe");
    conn.declare(Queue::transient(&q).auto_delete())
        .await
        .expect("the connection still works");
    conn.close().await;
}

/// Bad policies, and retry without automatic acks, are refused when the listener starts.
async fn retry_misconfiguration_is_refused(b: TestBroker) {
    let conn = connect(&b, DelayMechanism::Auto).await;
    let q = unique("core.retry.bad");
    conn.declare(Queue::transient(&q).auto_delete())
        .await
        .expect("declare");
    let handler = |_: Payment| async { Ok::<_, ListenerError>(()) };
    let bad = [
        (Listener::on(&q).retry(Retry::attempts(0)), "max_attempts"),
        (
            Listener::on(&q).retry(Retry::attempts(3).multiplier(0.5)),
            "multiplier",
        ),
        (
            Listener::on(&q)
                .retry(Retry::attempts(3))
                .ack_mode(AckMode::Manual),
            "AckMode::Auto",
        ),
    ];
    for (builder, says) in bad {
        let err = builder
            .handler(handler)
            .start(&conn)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, amqp_core::Error::Configuration(_)) && err.to_string().contains(says),
            "{err}"
        );
    }
    conn.close().await;
}

conformance!(
    retry_succeeds_after_two_failures,
    retry_succeeds_after_two_failures_with_wait_queues,
    retry_spent_goes_to_the_dlq,
    retry_spent_goes_to_the_dlq_with_wait_queues,
    retry_permanent_errors_go_straight_to_the_dlq,
    retry_permanent_errors_with_wait_queues,
    delay_mechanism_is_detected,
    retry_misconfiguration_is_refused,
);
