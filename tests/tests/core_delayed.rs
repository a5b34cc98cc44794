//! `Template::convert_and_send_delayed`: a delayed message arrives no earlier than its delay and
//! within half a second after it, through a named exchange (routing key kept) and through the
//! default exchange, persistent; shorter delays overtake longer ones sent before them. With the
//! detected mechanism (the bundled broker's delayed exchange, RabbitMQ's TTL wait queues) and
//! with the wait queues forced, on both brokers.

mod common;

use std::time::{Duration, Instant};

use amqp_core::{
    Binding, Connection, ConnectionFactory, DelayMechanism, Exchange, Listener, ListenerError,
    Metadata, Queue, Template,
};
use common::within;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde::{Deserialize, Serialize};
use tests::{TestBroker, conformance, unique};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Check {
    order: u64,
}

/// How late a delayed message may arrive.
const SLACK: Duration = Duration::from_millis(500);

async fn connect(b: &TestBroker, mechanism: DelayMechanism) -> Connection {
    let factory = ConnectionFactory::new(b.url())
        .connection_name(unique("core.delayed"))
        .delay_mechanism(mechanism);
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

/// What a listener saw: the payload, when, its routing key, its delivery mode.
type Arrival = (Check, Instant, String, Option<u8>);

async fn listen(
    conn: &Connection,
    queue: &str,
) -> (amqp_core::ListenerHandle, mpsc::UnboundedReceiver<Arrival>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Listener::on(queue)
        .handler_with_metadata(move |c: Check, meta: Metadata| {
            let arrival = (
                c,
                Instant::now(),
                meta.routing_key.clone(),
                *meta.properties.delivery_mode(),
            );
            let _ = tx.send(arrival);
            async { Ok::<_, ListenerError>(()) }
        })
        .start(conn)
        .await
        .expect("listener starts");
    (handle, rx)
}

async fn arrival(rx: &mut mpsc::UnboundedReceiver<Arrival>) -> Arrival {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a delayed message arrives within 10 s")
        .expect("the listener lives")
}

/// When a send began and when it returned (the broker took the message in between).
type Sent = (Instant, Instant);

/// Sends with a delay, noting when the call began and returned.
async fn send_delayed(
    template: &Template,
    exchange: &str,
    key: &str,
    check: Check,
    delay: Duration,
) -> Sent {
    let began = Instant::now();
    template
        .convert_and_send_delayed(exchange, key, &check, delay)
        .await
        .expect("delayed send");
    (began, Instant::now())
}

/// No earlier than the delay after the send began, and no more than [`SLACK`] later than the
/// delay after it returned.
#[track_caller]
fn assert_on_time((began, returned): Sent, arrived: Instant, delay: Duration) {
    let since_began = arrived - began;
    let since_returned = arrived.saturating_duration_since(returned);
    eprintln!(
        "delay {delay:?}: arrived {since_returned:?} after the send returned ({:?} after it began)",
        since_began
    );
    assert!(
        since_began >= delay,
        "arrived {since_began:?} after the send began, before its delay of {delay:?}"
    );
    assert!(
        since_returned <= delay + SLACK,
        "arrived {since_returned:?} after the send returned, more than {SLACK:?} late for {delay:?}"
    );
}

/// Through a topic exchange: on time, with its own routing key, persistent.
async fn through_an_exchange(b: &TestBroker, mechanism: DelayMechanism) {
    let conn = connect(b, mechanism).await;
    let exchange = unique("core.delayed.x");
    let queue = unique("core.delayed.q");
    conn.declare(vec![
        Exchange::topic(&exchange)
            .durable(false)
            .auto_delete(true)
            .into(),
        Queue::transient(&queue).into(),
        Binding::queue(&queue).to(&exchange).key("order.*").into(),
    ])
    .await
    .expect("declare");
    let (listener, mut arrivals) = listen(&conn, &queue).await;
    let template = Template::new(conn.clone());
    let delay = Duration::from_millis(1200);
    let sent = send_delayed(
        &template,
        &exchange,
        "order.check",
        Check { order: 1 },
        delay,
    )
    .await;
    let (check, at, routing_key, mode) = arrival(&mut arrivals).await;
    assert_eq!(check, Check { order: 1 });
    assert_on_time(sent, at, delay);
    assert_eq!(routing_key, "order.check", "the routing key is kept");
    assert_eq!(mode, Some(2), "persistent by default");
    listener.shutdown().await;
    clean_up(b, &[queue], &[exchange]).await;
    conn.close().await;
}

/// Through the default exchange: two delays sent longest first arrive shortest first, each on
/// time.
async fn to_a_queue(b: &TestBroker, mechanism: DelayMechanism) {
    let conn = connect(b, mechanism).await;
    let queue = unique("core.delayed.q");
    conn.declare(Queue::transient(&queue))
        .await
        .expect("declare");
    let (listener, mut arrivals) = listen(&conn, &queue).await;
    let template = Template::new(conn.clone());
    let (long, short) = (Duration::from_millis(1500), Duration::from_millis(600));
    let sent_long = send_delayed(&template, "", &queue, Check { order: 2 }, long).await;
    let sent_short = send_delayed(&template, "", &queue, Check { order: 3 }, short).await;
    let (first, first_at, routing_key, _) = arrival(&mut arrivals).await;
    let (second, second_at, _, _) = arrival(&mut arrivals).await;
    assert_eq!(
        (first.order, second.order),
        (3, 2),
        "the shorter delay comes first"
    );
    assert_on_time(sent_short, first_at, short);
    assert_on_time(sent_long, second_at, long);
    assert_eq!(routing_key, queue);
    listener.shutdown().await;
    clean_up(b, &[queue], &[]).await;
    conn.close().await;
}

async fn clean_up(b: &TestBroker, queues: &[String], exchanges: &[String]) {
    let (_c, ch) = common::open(b).await;
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in exchanges {
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

async fn delayed_send_through_an_exchange(b: TestBroker) {
    through_an_exchange(&b, DelayMechanism::Auto).await;
}

async fn delayed_send_through_an_exchange_with_wait_queues(b: TestBroker) {
    through_an_exchange(&b, DelayMechanism::WaitQueues).await;
}

async fn delayed_send_to_a_queue(b: TestBroker) {
    to_a_queue(&b, DelayMechanism::Auto).await;
}

async fn delayed_send_to_a_queue_with_wait_queues(b: TestBroker) {
    to_a_queue(&b, DelayMechanism::WaitQueues).await;
}

/// A delay beyond what brokers take (2³² − 1 ms) is a clear error, not a silent truncation.
async fn too_long_a_delay_is_refused(b: TestBroker) {
    let conn = connect(&b, DelayMechanism::Auto).await;
    let template = Template::new(conn.clone());
    let err = template
        .convert_and_send_delayed("", "anywhere", &1, Duration::from_secs(60 * 86_400))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, amqp_core::Error::Configuration(_)) && err.to_string().contains("delay"),
        "{err}"
    );
    conn.close().await;
}

/// A wait queue that went away is declared again: found missing by the send itself, and after
/// the connection recovers (here deleted meanwhile, as one lost by the broker would be).
async fn delayed_send_redeclares_after_recovery(b: TestBroker) {
    let name = unique("core.delayed.recovery");
    let factory = ConnectionFactory::new(b.url())
        .connection_name(&name)
        .delay_mechanism(DelayMechanism::WaitQueues)
        .recovery_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let conn = within("connect", factory.connect()).await.expect("connect");
    let queue = unique("core.delayed.q");
    conn.declare(Queue::transient(&queue))
        .await
        .expect("declare");
    let (listener, mut arrivals) = listen(&conn, &queue).await;
    let template = Template::new(conn.clone());
    // An odd delay, so that no other test shares the wait queue.
    let delay = Duration::from_millis(317);
    let wait_queue = format!("amqp-core.delay.{}", delay.as_millis());
    send_delayed(&template, "", &queue, Check { order: 1 }, delay).await;
    assert_eq!(arrival(&mut arrivals).await.0, Check { order: 1 });

    // Deleted on the same connection: the send finds it gone (mandatory, or 404) and declares
    // it again.
    clean_up(
        &b,
        std::slice::from_ref(&wait_queue),
        std::slice::from_ref(&wait_queue),
    )
    .await;
    let sent = send_delayed(&template, "", &queue, Check { order: 2 }, delay).await;
    let (check, at, _, _) = arrival(&mut arrivals).await;
    assert_eq!(check, Check { order: 2 });
    assert_on_time(sent, at, delay);

    clean_up(
        &b,
        std::slice::from_ref(&wait_queue),
        std::slice::from_ref(&wait_queue),
    )
    .await;
    assert_eq!(b.close_connections_named(&name).await, 1);
    within("the connection to recover", async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        while !conn.is_connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let sent = send_delayed(&template, "", &queue, Check { order: 3 }, delay).await;
    let (check, at, _, _) = arrival(&mut arrivals).await;
    assert_eq!(check, Check { order: 3 });
    assert_on_time(sent, at, delay);
    listener.shutdown().await;
    clean_up(&b, &[queue, wait_queue.clone()], &[wait_queue]).await;
    conn.close().await;
}

conformance!(
    delayed_send_redeclares_after_recovery,
    delayed_send_through_an_exchange,
    delayed_send_through_an_exchange_with_wait_queues,
    delayed_send_to_a_queue,
    delayed_send_to_a_queue_with_wait_queues,
    too_long_a_delay_is_refused,
);
