//! Throughput of the framework against raw `lapin`, side by side, on the bundled broker.
//!
//! Both variants push the same N small JSON messages through a fresh durable queue:
//!
//! - **raw lapin**: one confirm-mode channel publishing with a window of in-flight publishes,
//!   each awaiting its publisher confirm, serializing with `serde_json` itself; one consumer with prefetch P that
//!   deserializes and acks each delivery.
//! - **framework**: `Template::convert_and_send` from W concurrent sends (the same window) and a
//!   `Listener` with the same prefetch whose handler receives the same struct.
//!
//! Measured per variant: publish throughput (first publish until the last confirm is in) and
//! end-to-end throughput (first publish until the last message is handled, the consumer running
//! from the start). Rounds alternate raw, framework, raw, framework, … on fresh connections and
//! queues; the table gives each round, the medians, and framework / raw as a percentage.
//!
//! ```text
//! cargo bench -p amqp-core --bench throughput
//! BENCH_MESSAGES=200000 BENCH_ROUNDS=5 cargo bench -p amqp-core --bench throughput
//! ```
//!
//! Settings (environment): `BENCH_MESSAGES` (50 000), `BENCH_ROUNDS` (3), `BENCH_WINDOW`
//! (in-flight publishes, 1000), `BENCH_PREFETCH` (250), `BENCH_ONLY=raw|framework` (one variant, for profiling), `BENCH_RAW_PUBLISH=loop` (raw lapin
//! publishes from a single loop keeping `window` confirms outstanding, instead of from `window`
//! concurrent sends; lapin's `basic_publish` waits for its frames to be written, so a single
//! loop writes one message per I/O round and is slower than the framework's pipelining),
//! `BENCH_RAW_PROPERTIES=framework` (raw lapin sends the properties the framework adds: a
//! `__TypeId__` header, a UUID message id and a timestamp, to tell their cost from the
//! framework's code). Figures only, no assertions: the numbers
//! depend on the machine and on whatever else it is doing. Run without `--bench` (as
//! `cargo test --all-targets` does) it makes one quick round of at most 1 000 messages, a smoke
//! test.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amqp_core::broker::Broker;
use amqp_core::{Connection, Listener, ListenerError, Queue, Template};
use anyhow::{Context as _, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The payload: about 100 bytes of JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    id: u64,
    name: String,
    timestamp_ms: u64,
}

impl Event {
    fn new(id: u64) -> Self {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            id,
            name: format!(
                "order-created/customer-{:08}/region-eu-west-1/batch",
                id % 100_000_000
            ),
            timestamp_ms,
        }
    }
}

/// How long one run may take before the bench gives up on it (a lost message, say).
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
struct Settings {
    messages: u64,
    rounds: usize,
    window: usize,
    prefetch: u16,
    /// Raw lapin publishes from one loop instead of from `window` concurrent sends.
    raw_loop: bool,
    /// Raw lapin sends the same properties as the framework (`BENCH_RAW_PROPERTIES=framework`).
    raw_like_framework: bool,
    /// Runs one variant only (for profiling): `BENCH_ONLY=raw` or `framework`.
    only: Option<Variant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Raw,
    Framework,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(v) => v
                    .replace('_', "")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}={v} is not a valid number")),
                Err(_) => Ok(default),
            }
        }
        Ok(Self {
            messages: var("BENCH_MESSAGES", 50_000)?.max(1),
            rounds: var("BENCH_ROUNDS", 3)?.max(1),
            window: var("BENCH_WINDOW", 1000)?.max(1),
            prefetch: var("BENCH_PREFETCH", 250)?,
            raw_loop: std::env::var("BENCH_RAW_PUBLISH").is_ok_and(|v| v == "loop"),
            raw_like_framework: std::env::var("BENCH_RAW_PROPERTIES")
                .is_ok_and(|v| v == "framework"),
            only: match std::env::var("BENCH_ONLY").as_deref() {
                Ok("raw") => Some(Variant::Raw),
                Ok("framework") => Some(Variant::Framework),
                Ok(other) => bail!("BENCH_ONLY={other}: say raw or framework"),
                Err(_) => None,
            },
        })
    }
}

/// When a run's publishing and its consuming finished, counted from the first publish.
#[derive(Clone, Copy, Debug)]
struct Run {
    published: Duration,
    handled: Duration,
    /// CPU time the whole process (clients and broker) spent from the first publish to the last
    /// handled message, if the platform tells: steadier than wall time on a busy machine.
    cpu: Option<Duration>,
}

/// CPU time used by this process so far (user + system), from `/proc/self/stat` on Linux.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ, 100 on every Linux platform Rust supports.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Counts handled messages and reports the time the last one was handled.
struct Finish {
    count: AtomicU64,
    target: u64,
    done: parking_lot::Mutex<Option<oneshot::Sender<Instant>>>,
}

impl Finish {
    fn new(target: u64) -> (Arc<Self>, oneshot::Receiver<Instant>) {
        let (tx, rx) = oneshot::channel();
        let finish = Arc::new(Self {
            count: AtomicU64::new(0),
            target,
            done: parking_lot::Mutex::new(Some(tx)),
        });
        (finish, rx)
    }

    fn handled_one(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            if let Some(tx) = self.done.lock().take() {
                let _ = tx.send(Instant::now());
            }
        }
    }
}

async fn wait_handled(rx: oneshot::Receiver<Instant>, finish: &Finish) -> anyhow::Result<Instant> {
    match tokio::time::timeout(RUN_LIMIT, rx).await {
        Ok(Ok(at)) => Ok(at),
        _ => bail!(
            "only {} of {} messages handled within {RUN_LIMIT:?}",
            finish.count.load(Ordering::Relaxed),
            finish.target
        ),
    }
}

/// Raw lapin: confirm window on one channel, a prefetching consumer on another.
async fn run_raw(url: &str, queue: &str, s: Settings) -> anyhow::Result<Run> {
    let conn = lapin::Connection::connect(url, ConnectionProperties::default()).await?;
    let consume_ch = conn.create_channel().await?;
    consume_ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    consume_ch
        .basic_qos(s.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume_ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (finish, finished) = Finish::new(s.messages);
    let counter = finish.clone();
    let consuming = tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let event: Event = serde_json::from_slice(&delivery.data)?;
            black_box(event);
            counter.handled_one();
            delivery.acker.ack(BasicAckOptions::default()).await?;
            if counter.count.load(Ordering::Relaxed) >= counter.target {
                break;
            }
        }
        anyhow::Ok(())
    });

    let publish_ch = conn.create_channel().await?;
    publish_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);

    let cpu_start = process_cpu();
    let start = Instant::now();
    if s.raw_loop {
        // One publishing loop; up to `window` confirms outstanding.
        let mut in_flight = FuturesUnordered::new();
        for id in 0..s.messages {
            let body = serde_json::to_vec(&Event::new(id))?;
            let confirm = publish_ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    raw_properties(&properties, s.raw_like_framework),
                )
                .await?;
            in_flight.push(confirm);
            if in_flight.len() >= s.window {
                expect_ack(in_flight.next().await)?;
            }
        }
        while let Some(confirmation) = in_flight.next().await {
            expect_ack(Some(confirmation))?;
        }
    } else {
        // `window` publishes in flight at once, each awaiting its own confirm: the same shape
        // as the framework's concurrent sends, so that only the framework's own cost differs.
        let publish_ch = &publish_ch;
        let properties = &properties;
        let mut sends = futures::stream::iter(0..s.messages)
            .map(|id| async move {
                let body = serde_json::to_vec(&Event::new(id))?;
                let confirm = publish_ch
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &body,
                        raw_properties(properties, s.raw_like_framework),
                    )
                    .await?;
                expect_ack(Some(confirm.await))
            })
            .buffer_unordered(s.window);
        while let Some(sent) = sends.next().await {
            sent?;
        }
    }
    let published = start.elapsed();

    let last = wait_handled(finished, &finish).await?;
    let cpu = process_cpu().zip(cpu_start).map(|(end, start)| end - start);
    consuming.await??;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(Run {
        published,
        handled: last - start,
        cpu,
    })
}

/// The properties of one raw publish: the fixed ones, or with `like_framework` what
/// `Template::convert_and_send` adds (a type-id header, a fresh message id, a timestamp).
fn raw_properties(fixed: &BasicProperties, like_framework: bool) -> BasicProperties {
    if !like_framework {
        return fixed.clone();
    }
    let mut headers = FieldTable::default();
    headers.insert(
        amqp_core::TYPE_ID_HEADER.into(),
        AMQPValue::LongString(std::any::type_name::<Event>().into()),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    fixed
        .clone()
        .with_headers(headers)
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_timestamp(now)
}

fn expect_ack(c: Option<lapin::Result<Confirmation>>) -> anyhow::Result<()> {
    match c.context("a confirm went missing")?? {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("publish not confirmed: {other:?}"),
    }
}

/// The framework: concurrent `convert_and_send` on one template, a `Listener`.
async fn run_framework(url: &str, queue: &str, s: Settings) -> anyhow::Result<Run> {
    let conn = Connection::connect(url).await?;
    conn.declare(Queue::durable(queue)).await?;
    let (finish, finished) = Finish::new(s.messages);
    let counter = finish.clone();
    let listener = Listener::on(queue)
        .prefetch(s.prefetch)
        .handler(move |event: Event| {
            black_box(event);
            counter.handled_one();
            async { Ok::<_, ListenerError>(()) }
        })
        .start(&conn)
        .await?;
    let template = Template::new(conn.clone());
    // Open the publisher channel outside the timed part, as the raw variant does.
    template.convert_and_send("", "bench.nowhere", &()).await?;

    let cpu_start = process_cpu();
    let start = Instant::now();
    let failures = AtomicU64::new(0);
    futures::stream::iter(0..s.messages)
        .for_each_concurrent(s.window, |id| {
            let template = &template;
            let failures = &failures;
            async move {
                if let Err(e) = template.convert_and_send("", queue, &Event::new(id)).await {
                    if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("framework send failed: {e}");
                    }
                }
            }
        })
        .await;
    let published = start.elapsed();
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} framework sends failed");
    }

    let last = wait_handled(finished, &finish).await?;
    let cpu = process_cpu().zip(cpu_start).map(|(end, start)| end - start);
    listener.shutdown().await;
    conn.close().await;
    Ok(Run {
        published,
        handled: last - start,
        cpu,
    })
}

fn rate(messages: u64, d: Duration) -> f64 {
    messages as f64 / d.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// CPU microseconds per message, if measured.
fn cpu_us(messages: u64, run: &Run) -> Option<f64> {
    run.cpu.map(|c| c.as_secs_f64() * 1e6 / messages as f64)
}

fn print_table(s: Settings, raw: &[Run], framework: &[Run]) {
    let n = s.messages;
    let cpu_cell = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
    println!();
    println!(
        "{n} messages of ~{} B JSON, window {} in-flight publishes, prefetch {}",
        serde_json::to_vec(&Event::new(12_345_678)).map_or(0, |b| b.len()),
        s.window,
        s.prefetch
    );
    println!(
        "{:<8}{:>15}{:>15}{:>15}{:>15}{:>13}{:>13}",
        "round", "raw pub/s", "fw pub/s", "raw e2e/s", "fw e2e/s", "raw cpu us", "fw cpu us"
    );
    for (i, (r, f)) in raw.iter().zip(framework).enumerate() {
        println!(
            "{:<8}{:>15.0}{:>15.0}{:>15.0}{:>15.0}{:>13}{:>13}",
            i + 1,
            rate(n, r.published),
            rate(n, f.published),
            rate(n, r.handled),
            rate(n, f.handled),
            cpu_cell(cpu_us(n, r)),
            cpu_cell(cpu_us(n, f)),
        );
    }
    let med = |runs: &[Run], pick: fn(&Run) -> Duration| {
        median(runs.iter().map(|r| rate(n, pick(r))).collect())
    };
    let med_cpu = |runs: &[Run]| -> Option<f64> {
        let v: Option<Vec<f64>> = runs.iter().map(|r| cpu_us(n, r)).collect();
        v.map(median)
    };
    let raw_pub = med(raw, |r| r.published);
    let fw_pub = med(framework, |r| r.published);
    let raw_e2e = med(raw, |r| r.handled);
    let fw_e2e = med(framework, |r| r.handled);
    let (raw_cpu, fw_cpu) = (med_cpu(raw), med_cpu(framework));
    println!(
        "{:<8}{:>15.0}{:>15.0}{:>15.0}{:>15.0}{:>13}{:>13}",
        "median",
        raw_pub,
        fw_pub,
        raw_e2e,
        fw_e2e,
        cpu_cell(raw_cpu),
        cpu_cell(fw_cpu)
    );
    println!("(cpu us: CPU time of the whole process, broker included, per message)");
    println!();
    println!(
        "framework / raw lapin: publish {:.1} %, end-to-end {:.1} %  (target: at least 85 %)",
        100.0 * fw_pub / raw_pub,
        100.0 * fw_e2e / raw_e2e
    );
    if let (Some(r), Some(f)) = (raw_cpu, fw_cpu) {
        println!(
            "CPU per message, framework / raw lapin: {:.1} %",
            100.0 * f / r
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut s = Settings::from_env()?;
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then a quick smoke run.
    if !std::env::args().any(|a| a == "--bench") {
        s.messages = s.messages.min(1_000);
        s.rounds = 1;
    }
    let broker = Broker::builder().port(0).start().await?;
    let url = broker.amqp_url();
    let run_id = std::process::id();

    let mut raw = Vec::with_capacity(s.rounds);
    let mut framework = Vec::with_capacity(s.rounds);
    for round in 1..=s.rounds {
        if s.only != Some(Variant::Framework) {
            let r = run_raw(&url, &format!("bench.{run_id}.raw.{round}"), s)
                .await
                .with_context(|| format!("raw lapin, round {round}"))?;
            eprintln!(
                "round {round} raw lapin: published in {:?}, handled in {:?}",
                r.published, r.handled
            );
            raw.push(r);
        }
        if s.only != Some(Variant::Raw) {
            let f = run_framework(&url, &format!("bench.{run_id}.framework.{round}"), s)
                .await
                .with_context(|| format!("framework, round {round}"))?;
            eprintln!(
                "round {round} framework: published in {:?}, handled in {:?}",
                f.published, f.handled
            );
            framework.push(f);
        }
    }
    if s.only.is_none() {
        print_table(s, &raw, &framework);
    }
    broker.shutdown().await?;
    Ok(())
}
