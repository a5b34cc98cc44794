//! Listener metrics and the health check. A recorder of our own (installed once per process, as
//! an application would install its exporter) reads back what the listeners recorded: handled,
//! failed, retried and dead-lettered deliveries, in flight, handler latency, labelled by
//! listener and queue; on both brokers. The health check is true while consuming, false while
//! the bundled broker is down, and true again once the connection has recovered.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use amqp_core::retry::dead_letter_queue;
use amqp_core::{
    ConnectionFactory, HealthCheck, Listener, ListenerError, Metadata, Queue, Retry, Template,
};
use common::within;
use lapin::options::QueueDeleteOptions;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata as MetricMetadata, SharedString};
use metrics::{HistogramFn, Recorder, Unit};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tests::{TestBroker, conformance, unique};

/// Every value recorded in this test process, by metric key (name and labels).
#[derive(Debug, Default)]
struct Recorded {
    counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    /// `f64` bits, as `metrics` stores gauges in an `AtomicU64`.
    gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<Key, Arc<Samples>>>,
}

#[derive(Debug, Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().push(value);
    }
}

static RECORDED: LazyLock<Arc<Recorded>> = LazyLock::new(|| {
    let recorded = Arc::new(Recorded::default());
    metrics::set_global_recorder(Global(recorded.clone())).expect("the only recorder");
    recorded
});

/// The process-wide recorder, forwarding to [`RECORDED`].
struct Global(Arc<Recorded>);

impl Recorder for Global {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &MetricMetadata<'_>) -> Counter {
        Counter::from_arc(
            self.0
                .counters
                .lock()
                .entry(key.clone())
                .or_default()
                .clone(),
        )
    }

    fn register_gauge(&self, key: &Key, _: &MetricMetadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.gauges.lock().entry(key.clone()).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &MetricMetadata<'_>) -> Histogram {
        Histogram::from_arc(
            self.0
                .histograms
                .lock()
                .entry(key.clone())
                .or_default()
                .clone(),
        )
    }
}

/// The key of `name` for one listener's queue.
fn key(name: &str, listener: &str, queue: &str) -> Key {
    Key::from_parts(
        name.to_owned(),
        vec![
            metrics::Label::new("listener", listener.to_owned()),
            metrics::Label::new("queue", queue.to_owned()),
        ],
    )
}

/// What one listener's queue recorded so far.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    handled: u64,
    failed: u64,
    retried: u64,
    dead_lettered: u64,
    in_flight: f64,
    handler_runs: usize,
}

fn counts(listener: &str, queue: &str) -> Counts {
    let counter = |name: &str| {
        RECORDED
            .counters
            .lock()
            .get(&key(name, listener, queue))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    };
    let in_flight = RECORDED
        .gauges
        .lock()
        .get(&key("amqp_listener_in_flight", listener, queue))
        .map_or(f64::NAN, |g| f64::from_bits(g.load(Ordering::Relaxed)));
    let handler_runs = RECORDED
        .histograms
        .lock()
        .get(&key("amqp_listener_handler_seconds", listener, queue))
        .map_or(0, |h| h.0.lock().len());
    Counts {
        handled: counter("amqp_listener_handled_total"),
        failed: counter("amqp_listener_failed_total"),
        retried: counter("amqp_listener_retried_total"),
        dead_lettered: counter("amqp_listener_dead_lettered_total"),
        in_flight,
        handler_runs,
    }
}

/// Waits until the listener's queue has recorded `expected` (the counters are updated after
/// the ack or the re-publish, so shortly after the messages move).
async fn wait_for(listener: &str, queue: &str, expected: Counts) {
    let waited = tokio::time::timeout(common::WAIT, async {
        while counts(listener, queue) != expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "expected {expected:?}, recorded {:?}",
        counts(listener, queue)
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Job {
    Succeed,
    Fail,
    /// Requeued on its first delivery, handled on the redelivery.
    RequeueOnce,
}

fn handle(job: Job, meta: Metadata) -> Result<(), ListenerError> {
    match job {
        Job::Succeed => Ok(()),
        Job::Fail => Err(ListenerError::retry("job failed")),
        Job::RequeueOnce if meta.redelivered => Ok(()),
        Job::RequeueOnce => Err(ListenerError::requeue("not yet")),
    }
}

/// With a retry policy of two attempts: three jobs succeed, one fails twice (retried once, then
/// to `<queue>.dlq`). Without one: a failure is rejected (dead-lettered by the broker, if the
/// queue says where), and a requeue counts as a retry.
async fn listener_metrics_count_each_outcome(b: TestBroker) {
    LazyLock::force(&RECORDED);
    let conn = within(
        "connect",
        ConnectionFactory::new(b.url())
            .connection_name(unique("core.metrics"))
            .connect(),
    )
    .await
    .expect("connect");
    let with_retry = unique("core.metrics.retry");
    let plain = unique("core.metrics.plain");
    conn.declare(vec![
        Queue::transient(&with_retry).into(),
        Queue::transient(&plain).into(),
    ])
    .await
    .expect("declare");
    let retry = Retry::attempts(2).initial(Duration::from_millis(50));
    let retrying = Listener::on(&with_retry)
        .id("metrics-retrying")
        .retry(retry)
        .handler_with_metadata(|job: Job, meta| async move { handle(job, meta) })
        .start(&conn)
        .await
        .expect("listener starts");
    let rejecting = Listener::on(&plain)
        .id("metrics-rejecting")
        .handler_with_metadata(|job: Job, meta| async move { handle(job, meta) })
        .start(&conn)
        .await
        .expect("listener starts");
    let template = Template::new(conn.clone());
    for job in [Job::Succeed, Job::Fail, Job::Succeed, Job::Succeed] {
        template
            .convert_and_send("", &with_retry, &job)
            .await
            .expect("send");
    }
    for job in [Job::Fail, Job::RequeueOnce, Job::Succeed] {
        template
            .convert_and_send("", &plain, &job)
            .await
            .expect("send");
    }
    let expected = Counts {
        handled: 3,
        failed: 2,
        retried: 1,
        dead_lettered: 1,
        in_flight: 0.0,
        handler_runs: 5,
    };
    wait_for("metrics-retrying", &with_retry, expected).await;
    let expected = Counts {
        handled: 2,
        failed: 2,
        retried: 1,
        dead_lettered: 1,
        in_flight: 0.0,
        handler_runs: 4,
    };
    wait_for("metrics-rejecting", &plain, expected).await;
    // Each queue has its own labels: nothing was recorded under the other's.
    assert_eq!(counts("metrics-retrying", &plain).handled, 0);

    retrying.shutdown().await;
    rejecting.shutdown().await;
    conn.close().await;
    let (_c, ch) = common::open(&b).await;
    let mut queues = vec![with_retry.clone(), plain, dead_letter_queue(&with_retry)];
    queues.push(format!(
        "{with_retry}.retry.{}",
        retry.delay_after(1).as_millis()
    ));
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// A handler that is still running counts as in flight.
async fn a_running_handler_is_in_flight(b: TestBroker) {
    LazyLock::force(&RECORDED);
    let conn = within("connect", ConnectionFactory::new(b.url()).connect())
        .await
        .expect("connect");
    let queue = unique("core.metrics.inflight");
    conn.declare(Queue::transient(&queue))
        .await
        .expect("declare");
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let listener = Listener::on(&queue)
        .concurrency(2)
        .handler({
            let release = release.clone();
            move |_: Job| {
                let (entered_tx, release) = (entered_tx.clone(), release.clone());
                async move {
                    entered_tx.send(()).ok();
                    release.acquire().await.expect("never closed").forget();
                    Ok::<_, ListenerError>(())
                }
            }
        })
        .start(&conn)
        .await
        .expect("listener starts");
    let template = Template::new(conn.clone());
    for _ in 0..2 {
        template
            .convert_and_send("", &queue, &Job::Succeed)
            .await
            .expect("send");
    }
    for _ in 0..2 {
        within("a handler starts", entered.recv()).await;
    }
    assert_eq!(
        counts(&queue, &queue).in_flight,
        2.0,
        "the listener id defaults to the queue"
    );
    release.add_permits(2);
    let expected = Counts {
        handled: 2,
        in_flight: 0.0,
        handler_runs: 2,
        ..Counts::default()
    };
    wait_for(&queue, &queue, expected).await;
    listener.shutdown().await;
    conn.close().await;
}

conformance!(
    listener_metrics_count_each_outcome,
    a_running_handler_is_in_flight,
);

/// Polls `check` until its health's `healthy` is `want`.
async fn health_becomes(check: &HealthCheck, want: bool, what: &str) -> amqp_core::Health {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let health = check.health();
            if health.healthy == want {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: health stayed {:?}", check.health()))
}

/// Healthy while consuming; the broker stops: not connected, not consuming; the broker comes
/// back on the same port: healthy again once the connection and the consumers have recovered.
#[tokio::test]
async fn health_follows_the_broker_going_away_and_coming_back() {
    let broker = amqp_broker::Broker::builder()
        .port(0)
        .start()
        .await
        .expect("broker starts");
    let port = broker.port();
    let conn = within(
        "connect",
        ConnectionFactory::new(broker.amqp_url())
            .recovery_backoff(Duration::from_millis(50), Duration::from_millis(200))
            .unreachable_after(Duration::from_secs(20))
            .connect(),
    )
    .await
    .expect("connect");
    let queue = unique("core.health.q");
    conn.declare(Queue::transient(&queue))
        .await
        .expect("declare");
    let listener = Listener::on(&queue)
        .id("health-listener")
        .concurrency(2)
        .handler(|_: Job| async { Ok::<_, ListenerError>(()) })
        .start(&conn)
        .await
        .expect("listener starts");
    let check = HealthCheck::new(&conn).listener(&listener);
    let health = health_becomes(&check, true, "consuming").await;
    assert!(health.connected);
    assert_eq!(health.listeners.len(), 1);
    let l = &health.listeners[0];
    assert_eq!(
        (l.id.as_str(), l.queue.as_str()),
        ("health-listener", queue.as_str())
    );
    assert_eq!(
        (l.consuming, l.consumers, l.expected_consumers),
        (true, 2, 2)
    );
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["healthy"], true);
    assert_eq!(json["listeners"][0]["consuming"], true);

    broker.shutdown().await.expect("shutdown");
    let health = health_becomes(&check, false, "broker stopped").await;
    // Both go: the connection first, then the consumers with it.
    let health = if health.connected || health.listeners[0].consuming {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let h = check.health();
                if !h.connected && !h.listeners[0].consuming {
                    return h;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("disconnected and not consuming")
    } else {
        health
    };
    assert_eq!(health.listeners[0].consumers, 0);

    let restarted = within("restart on the same port", async {
        loop {
            match amqp_broker::Broker::builder().port(port).start().await {
                Ok(b) => return b,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    let health = health_becomes(&check, true, "recovered").await;
    assert!(health.connected && health.listeners[0].consuming);
    listener.shutdown().await;
    conn.close().await;
    restarted.shutdown().await.expect("shutdown");
}
