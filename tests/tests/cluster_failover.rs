//! The same application on a three-node RabbitMQ cluster with quorum queues, losing a node
//! mid-stream: an `App` with an idempotent `#[rabbit_listener]` on a quorum queue, a producer
//! publishing with confirms at a steady rate (retrying a send whose confirm failed), and one node
//! stopped (`rabbitmqctl stop_app`) and later started again. Two scenarios: the node the
//! application is connected to (which also leads the queue: RabbitMQ puts a new queue's leader on
//! the declaring client's node), and the queue's leader while the application is connected
//! elsewhere.
//!
//! Checked: every confirmed message is handled, exactly once in effect (`idempotent`); the
//! application handles messages while the node is down (it moved to another node by itself).
//! Printed: the longest gap in processing and how long the application was disconnected.
//!
//! Needs the cluster of `scripts/rabbitmq-cluster.sh`, so the tests are `#[ignore]`d in the
//! normal suite; CI runs them in their own step:
//!
//! ```text
//! AMQP_TEST_CLUSTER_URLS=$(scripts/rabbitmq-cluster.sh start) \
//!     cargo test -p tests --test cluster_failover -- --ignored --nocapture
//! scripts/rabbitmq-cluster.sh stop
//! ```
//!
//! Run with `--ignored` but without the variable, they fail (they never pass without a cluster).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amqp_core::idempotent::{Idempotency, MemoryStore};
use amqp_core::{App, ConnectionFactory, Message, RunningApp, State, Template, rabbit_listener};
use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use tokio::time::Instant;

/// The cluster's AMQP URLs, comma-separated, node 1 first (what `rabbitmq-cluster.sh start`
/// prints).
const URLS_VAR: &str = "AMQP_TEST_CLUSTER_URLS";

/// The script that stops and starts nodes and names a queue's leader.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/rabbitmq-cluster.sh"
);

/// Messages per second the producer publishes.
const RATE_PER_SEC: u64 = 200;
/// How long it publishes: 3,000 messages.
const PUBLISH_FOR: Duration = Duration::from_secs(15);
/// When the node is stopped, and when it is started again, from the producer's start.
const STOP_AT: Duration = Duration::from_secs(5);
const RESTART_AT: Duration = Duration::from_secs(10);
/// A send still unconfirmed after this long fails the test.
const CONFIRM_WITHIN: Duration = Duration::from_secs(60);
/// Sends in flight at once (each waits for its own confirm).
const IN_FLIGHT: usize = 200;
/// How long the listener may take to catch up once the producer is done.
const DRAIN_WITHIN: Duration = Duration::from_secs(90);
/// `x-delivery-limit` of the queues (the listeners' `delivery_limit = 50`): high, because the idempotent container requeues a copy
/// that another consumer is still handling, and a node's loss returns what it had delivered;
/// both count as deliveries.
const DELIVERY_LIMIT: i64 = 50;

const CONNECTED_QUEUE: &str = "amqp-rs.cluster.connected-node";
const LEADER_QUEUE: &str = "amqp-rs.cluster.queue-leader";

/// One scenario at a time: both stop nodes of the one cluster.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    seq: u64,
}

/// What the listener did: how many times the handler ran for each message, and when.
struct Handled {
    started: Instant,
    inner: Mutex<HandledInner>,
}

#[derive(Default)]
struct HandledInner {
    runs: HashMap<u64, u32>,
    /// Time of each handler run, from `started`, in order.
    at: Vec<Duration>,
}

impl Handled {
    fn new(started: Instant) -> Arc<Self> {
        Arc::new(Self {
            started,
            inner: Mutex::new(HandledInner::default()),
        })
    }

    fn record(&self, seq: u64) {
        let mut inner = self.inner.lock();
        *inner.runs.entry(seq).or_default() += 1;
        inner.at.push(self.started.elapsed());
    }
}

#[rabbit_listener(
    queue = "amqp-rs.cluster.connected-node",
    id = "connected_node",
    quorum,
    delivery_limit = 50,
    idempotent,
    prefetch = 50
)]
async fn on_connected_node(State(handled): State<Arc<Handled>>, order: Order) {
    handled.record(order.seq);
}

#[rabbit_listener(
    queue = "amqp-rs.cluster.queue-leader",
    id = "queue_leader",
    quorum,
    delivery_limit = 50,
    idempotent,
    prefetch = 50
)]
async fn on_queue_leader(State(handled): State<Arc<Handled>>, order: Order) {
    handled.record(order.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a RabbitMQ cluster: AMQP_TEST_CLUSTER_URLS=$(scripts/rabbitmq-cluster.sh start)"]
async fn cluster_failover_stopping_the_connected_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    failover(Scenario::ConnectedNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a RabbitMQ cluster: AMQP_TEST_CLUSTER_URLS=$(scripts/rabbitmq-cluster.sh start)"]
async fn cluster_failover_stopping_the_queue_leader() {
    let _one = ONE_AT_A_TIME.lock().await;
    failover(Scenario::QueueLeader).await;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// Stop the node the application is connected to (and which leads the queue).
    ConnectedNode,
    /// Stop the queue's leader, the application being connected to another node.
    QueueLeader,
}

impl Scenario {
    fn queue(self) -> &'static str {
        match self {
            Self::ConnectedNode => CONNECTED_QUEUE,
            Self::QueueLeader => LEADER_QUEUE,
        }
    }
    fn listener(self) -> &'static str {
        match self {
            Self::ConnectedNode => "connected_node",
            Self::QueueLeader => "queue_leader",
        }
    }
}

fn cluster_urls() -> Vec<String> {
    let Some(urls) = std::env::var(URLS_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        panic!(
            "{URLS_VAR} is not set: start the cluster with `{URLS_VAR}=$(scripts/rabbitmq-cluster.sh start)`"
        );
    };
    let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
    assert_eq!(urls.len(), 3, "{URLS_VAR} lists three nodes: {urls:?}");
    urls
}

/// Runs the cluster script; its trimmed stdout.
async fn script(args: &[&str]) -> String {
    let out = tokio::process::Command::new(SCRIPT)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{SCRIPT}: {e}"));
    assert!(
        out.status.success(),
        "{SCRIPT} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Deletes the queue (left by an earlier run on the same cluster), then declares it through
/// `url`'s node, as the listener declares it, so that this node leads it.
async fn fresh_queue_led_by(url: &str, queue: &str) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(queue.into(), Default::default())
        .await
        .expect("delete the queue of an earlier run");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, args)
        .await
        .expect("declare the quorum queue");
    tests::close_quietly(&conn, "declared").await;
}

async fn delete_queue(url: &str, queue: &str) {
    if let Ok(conn) = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
    {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.queue_delete(queue.into(), Default::default()).await;
        }
        tests::close_quietly(&conn, "done").await;
    }
}

/// When the application's connection went down and came back, watched every 10 ms.
#[derive(Default)]
struct Outage {
    lost_at: Option<Duration>,
    back_at: Option<Duration>,
}

fn watch_connection(
    app: &RunningApp,
    started: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Outage> {
    let conn = app.connection().clone();
    tokio::spawn(async move {
        let mut outage = Outage::default();
        while !*stop.borrow() {
            let connected = conn.is_connected();
            match (connected, outage.lost_at, outage.back_at) {
                (false, None, _) => outage.lost_at = Some(started.elapsed()),
                (true, Some(_), None) => outage.back_at = Some(started.elapsed()),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outage
    })
}

/// What the producer achieved.
struct Produced {
    published: u64,
    confirmed: Vec<u64>,
    /// Sends that failed (no confirm, a nack, the connection lost) and went again.
    retries: u64,
}

/// Publishes `RATE_PER_SEC` orders a second for `PUBLISH_FOR`, each with its own message id and
/// waiting for its confirm; a send that fails goes again, with the same id, until confirmed.
async fn produce(template: Template, queue: &'static str) -> Produced {
    let total = RATE_PER_SEC * PUBLISH_FOR.as_secs();
    let confirmed = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE_PER_SEC as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sends = Vec::with_capacity(total as usize);
    for seq in 0..total {
        tick.tick().await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (template, confirmed, retries) = (template.clone(), confirmed.clone(), retries.clone());
        sends.push(tokio::spawn(async move {
            let body = serde_json::to_vec(&Order { seq }).expect("json");
            let properties = BasicProperties::default()
                .with_message_id(format!("{queue}.{seq}").into())
                .with_content_type("application/json".into());
            let deadline = Instant::now() + CONFIRM_WITHIN;
            loop {
                let message = Message::new(body.clone()).with_properties(properties.clone());
                match template.send("", queue, message).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!("send {seq} failed, again: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("send {seq} not confirmed within {CONFIRM_WITHIN:?}: {e}"),
                }
            }
            confirmed.lock().push(seq);
            drop(permit);
        }));
    }
    for send in sends {
        send.await.expect("a send task panicked");
    }
    let confirmed = std::mem::take(&mut *confirmed.lock());
    Produced {
        published: total,
        confirmed,
        retries: retries.load(std::sync::atomic::Ordering::Relaxed),
    }
}

async fn failover(scenario: Scenario) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let urls = cluster_urls();
    let queue = scenario.queue();
    // The application connects to the first node that answers: node 1. The queue's leader is
    // node 1 too (declared from there) or, to stop it alone, node 3.
    let leader_url = match scenario {
        Scenario::ConnectedNode => &urls[0],
        Scenario::QueueLeader => &urls[2],
    };
    fresh_queue_led_by(leader_url, queue).await;

    let started = Instant::now();
    let handled = Handled::new(started);
    let app_name = tests::unique("cluster-app");
    let app = App::new()
        .addresses(urls.clone())
        .listeners([scenario.listener()])
        .connection_name(&app_name)
        .idempotency(Idempotency::new(MemoryStore::new()))
        .state(handled.clone())
        .start()
        .await
        .expect("the app starts on the cluster");
    let app_node: usize = script(&["connection-node", &app_name])
        .await
        .parse()
        .expect("a node number");
    let leader: usize = script(&["leader", queue])
        .await
        .parse()
        .expect("a node number");
    let stopped = match scenario {
        Scenario::ConnectedNode => app_node,
        Scenario::QueueLeader => {
            assert_ne!(
                leader, app_node,
                "the queue's leader must be another node than the application's"
            );
            leader
        }
    };

    let producer_conn = ConnectionFactory::with_addresses(urls.clone())
        .connection_name(tests::unique("cluster-producer"))
        .connect()
        .await
        .expect("the producer connects to the cluster");
    let (stop_watch, watching) = tokio::sync::watch::channel(false);
    let watcher = watch_connection(&app, started, watching);
    let producer = tokio::spawn(produce(Template::new(producer_conn.clone()), queue));

    tokio::time::sleep_until(started + STOP_AT).await;
    let stop_began = started.elapsed();
    script(&["stop-node", &stopped.to_string()]).await;
    let stop_done = started.elapsed();
    tokio::time::sleep_until(started + RESTART_AT).await;
    let start_began = started.elapsed();
    script(&["start-node", &stopped.to_string()]).await;
    let start_done = started.elapsed();

    let produced = producer.await.expect("the producer panicked");
    let deadline = Instant::now() + DRAIN_WITHIN;
    let missing = loop {
        let missing: Vec<u64> = {
            let inner = handled.inner.lock();
            produced
                .confirmed
                .iter()
                .copied()
                .filter(|seq| !inner.runs.contains_key(seq))
                .collect()
        };
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop_watch.send(true);
    let outage = watcher.await.expect("the watcher panicked");
    app.shutdown().await;
    producer_conn.close().await;
    delete_queue(&urls[0], queue).await;

    let inner = handled.inner.lock();
    let twice: Vec<(u64, u32)> = inner
        .runs
        .iter()
        .filter(|(_, runs)| **runs > 1)
        .map(|(seq, runs)| (*seq, *runs))
        .collect();
    let while_down = inner
        .at
        .iter()
        .filter(|&&at| (stop_done..start_began).contains(&at))
        .count();
    let (gap, gap_from) = inner
        .at
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or_default();
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "cluster failover, {scenario:?}: application on node {app_node}, queue leader node {leader}, stopped node {stopped}"
    );
    println!(
        "  published {}, confirmed {} ({} sends retried), handled {} distinct, handler runs {}",
        produced.published,
        produced.confirmed.len(),
        produced.retries,
        inner.runs.len(),
        inner.at.len()
    );
    println!(
        "  stop_app at {} (done at {}), start_app at {} (running at {})",
        secs(stop_began),
        secs(stop_done),
        secs(start_began),
        secs(start_done)
    );
    match (outage.lost_at, outage.back_at) {
        (Some(lost), Some(back)) => println!(
            "  application disconnected at {}, reconnected at {}: {} without a connection",
            secs(lost),
            secs(back),
            secs(back - lost)
        ),
        (Some(lost), None) => println!("  application disconnected at {}, never back", secs(lost)),
        _ => println!("  application connection stayed up"),
    }
    println!(
        "  longest gap in processing: {} (from {}); handled while the node was down: {while_down}",
        secs(gap),
        secs(gap_from)
    );

    assert_eq!(
        produced.confirmed.len() as u64,
        produced.published,
        "every send is retried until confirmed"
    );
    assert!(
        missing.is_empty(),
        "{} confirmed messages never handled, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "idempotent: each message handled once in effect, but {} ran more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert!(
        while_down > 0,
        "the application handled nothing while node {stopped} was down"
    );
    if scenario == Scenario::ConnectedNode {
        assert!(
            outage.lost_at.is_some() && outage.back_at.is_some(),
            "the application lost node {stopped} and connected to another by itself"
        );
    }
}
