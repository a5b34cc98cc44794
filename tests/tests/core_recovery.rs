//! amqp-core's connection recovery: the broker closing the connection, the network going away,
//! the broker restarting on the same port. Listeners resume by themselves, declarations come
//! back, confirmed messages are never lost.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_core::{Connection, ConnectionFactory, Error, Listener, ListenerError, Queue, Template};
use common::within;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tests::proxy::Proxy;
use tests::{TestBroker, conformance, unique};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    id: u64,
}

fn factory(url: &str, name: &str) -> ConnectionFactory {
    ConnectionFactory::new(url)
        .connection_name(name)
        .recovery_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .unreachable_after(Duration::from_secs(10))
}

/// A listener that reports each event id it handles.
async fn reporting_listener(
    conn: &Connection,
    queue: &str,
) -> (amqp_core::ListenerHandle, mpsc::UnboundedReceiver<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Listener::on(queue)
        .prefetch(10)
        .handler(move |e: Event| {
            let tx = tx.clone();
            async move {
                tx.send(e.id).ok();
                Ok::<_, ListenerError>(())
            }
        })
        .start(conn)
        .await
        .expect("listener starts");
    (handle, rx)
}

async fn handled(rx: &mut mpsc::UnboundedReceiver<u64>) -> u64 {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("handled in time")
        .expect("listener alive")
}

/// The broker closes the connection (320): the connection comes back, the exclusive queue it
/// declared is declared again, and the listener resumes by itself.
async fn recovers_when_the_broker_closes_the_connection(b: TestBroker) {
    let name = unique("core.recovery.kick");
    let conn = within("connect", factory(b.url(), &name).connect())
        .await
        .expect("connect");
    let q = unique("core.recovery.q");
    conn.declare(Queue::transient(&q).exclusive())
        .await
        .expect("declare");
    let (listener, mut events) = reporting_listener(&conn, &q).await;
    let template = Template::new(conn.clone());
    template
        .convert_and_send("", &q, &Event { id: 1 })
        .await
        .expect("send");
    assert_eq!(handled(&mut events).await, 1);

    assert!(
        b.close_connections_named(&name).await >= 1,
        "the broker saw the connection's name"
    );
    // Sends wait for the recovered connection; the exclusive queue went with the old connection
    // and is back because the connection declared it again. (The close is asynchronous: a send
    // can still land in the old connection's exclusive queue and go down with it, as on
    // RabbitMQ, so keep sending until one is handled.)
    let resumed = tokio::time::timeout(Duration::from_secs(20), async {
        for id in 2.. {
            if let Err(e) = template.convert_and_send("", &q, &Event { id }).await {
                eprintln!("send during recovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if let Ok(Some(got)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await
            {
                return got;
            }
        }
        unreachable!("the loop only ends by returning")
    })
    .await
    .expect("the listener resumed by itself and handles new messages");
    assert!(resumed >= 2);
    listener.shutdown().await;
    conn.close().await;
}

/// The network goes away for a moment: a send waits it out and succeeds; the listener comes
/// back through the same path.
async fn a_send_waits_out_a_short_outage(b: TestBroker) {
    let proxy = Proxy::start(&b.addr()).await;
    let conn = within(
        "connect",
        factory(&b.url_via(proxy.addr()), &unique("core.outage")).connect(),
    )
    .await
    .expect("connect");
    let q = unique("core.outage.q");
    conn.declare(Queue::transient(&q).auto_delete())
        .await
        .expect("declare");
    let (listener, mut events) = reporting_listener(&conn, &q).await;
    let template = Template::new(conn.clone());
    template
        .convert_and_send("", &q, &Event { id: 1 })
        .await
        .expect("send");
    assert_eq!(handled(&mut events).await, 1);

    proxy.down();
    let send = tokio::spawn({
        let template = template.clone();
        let q = q.clone();
        async move { template.convert_and_send("", &q, &Event { id: 2 }).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!send.is_finished(), "the send waits for the broker");
    proxy.forward();
    within("the waiting send", send)
        .await
        .expect("task")
        .expect("it succeeds once the broker is back");
    assert_eq!(handled(&mut events).await, 2);
    listener.shutdown().await;
    conn.close().await;
}

/// An outage longer than `unreachable_after` fails the send with an error that says so; once
/// the broker is back, sends work again.
async fn a_long_outage_is_reported_as_unreachable(b: TestBroker) {
    let proxy = Proxy::start(&b.addr()).await;
    let conn = within(
        "connect",
        factory(&b.url_via(proxy.addr()), &unique("core.unreachable"))
            .unreachable_after(Duration::from_millis(600))
            .connect(),
    )
    .await
    .expect("connect");
    let q = unique("core.unreachable.q");
    conn.declare(Queue::transient(&q)).await.expect("declare");
    let template = Template::new(conn.clone());
    proxy.down();
    let started = Instant::now();
    let err = within(
        "the failing send",
        template.convert_and_send("", &q, &Event { id: 1 }),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited first: {:?}",
        started.elapsed()
    );
    proxy.forward();
    within("a send after the outage", async {
        loop {
            if template
                .convert_and_send("", &q, &Event { id: 2 })
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let back: Option<Event> = template
        .receive_and_convert(&q, Duration::from_secs(2))
        .await
        .expect("receive");
    assert_eq!(back, Some(Event { id: 2 }));
    let (_c, ch) = common::open(&b).await;
    common::delete_queue(&ch, &q).await;
    conn.close().await;
}

/// Every confirmed message is handled, however often the broker closes the connection in the
/// middle (messages unacked at the time come again: the handler sees duplicates, never gaps).
async fn confirmed_messages_survive_forced_closes(b: TestBroker) {
    let name = unique("core.nolos");
    let conn = within("connect", factory(b.url(), &name).connect())
        .await
        .expect("connect");
    let q = unique("core.noloss.q");
    conn.declare(Queue::transient(&q)).await.expect("declare");
    let seen: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let record = seen.clone();
    let listener = Listener::on(&q)
        .prefetch(20)
        .handler(move |e: Event| {
            let record = record.clone();
            async move {
                record.lock().insert(e.id);
                Ok::<_, ListenerError>(())
            }
        })
        .start(&conn)
        .await
        .expect("listener");
    let template = Template::new(conn.clone());
    const N: u64 = 300;
    for id in 0..N {
        if id == N / 3 || id == 2 * N / 3 {
            b.close_connections_named(&name).await;
        }
        // Retry until confirmed: a send that failed may or may not have reached the broker.
        within("a confirmed send", async {
            while template
                .convert_and_send("", &q, &Event { id })
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.lock().len() < N as usize {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let seen = seen.lock();
        let missing: Vec<_> = (0..N).filter(|i| !seen.contains(i)).collect();
        panic!("{} of {N} handled; missing {missing:?}", seen.len());
    });
    listener.shutdown().await;
    let (_c, ch) = common::open(&b).await;
    common::delete_queue(&ch, &q).await;
    conn.close().await;
}

/// A list of addresses is tried in turn.
async fn an_address_list_is_tried_in_turn(b: TestBroker) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let urls = [format!("amqp://guest:guest@{dead}/%2f"), b.url().to_owned()];
    let conn = within("connect", ConnectionFactory::with_addresses(urls).connect())
        .await
        .expect("the second address answers");
    assert!(conn.is_connected());
    conn.close().await;
}

conformance!(
    recovers_when_the_broker_closes_the_connection,
    a_send_waits_out_a_short_outage,
    a_long_outage_is_reported_as_unreachable,
    confirmed_messages_survive_forced_closes,
    an_address_list_is_tried_in_turn,
);

/// The broker stops and starts again on the same port (only the bundled broker can be
/// restarted by a test): the connection comes back, re-declares the queue the new broker does not
/// have, and the listener resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_the_broker_restarts_on_the_same_port() {
    let broker = amqp_broker::Broker::builder()
        .port(0)
        .start()
        .await
        .expect("broker");
    let port = broker.port();
    let url = broker.amqp_url();
    let name = unique("core.restart");
    let conn = within("connect", factory(&url, &name).heartbeat_secs(7).connect())
        .await
        .expect("connect");
    let seen = broker.connections();
    let mine = seen
        .iter()
        .find(|c| c.name.as_deref() == Some(name.as_str()));
    let mine =
        mine.unwrap_or_else(|| panic!("the connection name is visible to the broker: {seen:?}"));
    assert_eq!(
        mine.heartbeat_secs, 7,
        "the heartbeat asked for is the one agreed"
    );
    let q = unique("core.restart.q");
    conn.declare(Queue::durable(&q)).await.expect("declare");
    let (listener, mut events) = reporting_listener(&conn, &q).await;
    let template = Template::new(conn.clone());
    template
        .convert_and_send("", &q, &Event { id: 1 })
        .await
        .expect("send");
    assert_eq!(handled(&mut events).await, 1);

    broker.shutdown().await.expect("shutdown");
    let restarted = within("restart on the same port", async {
        loop {
            match amqp_broker::Broker::builder().port(port).start().await {
                Ok(b) => break b,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert_eq!(restarted.port(), port);
    within("a send to the restarted broker", async {
        while template
            .convert_and_send("", &q, &Event { id: 2 })
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        handled(&mut events).await,
        2,
        "the listener resumed on the new broker"
    );
    listener.shutdown().await;
    conn.close().await;
    restarted.shutdown().await.expect("shutdown");
}
