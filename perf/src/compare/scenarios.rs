//! The six scenarios, each measured on one broker at a time.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use serde::Serialize;

use super::procstat;
use crate::options::RunOptions;
use crate::run::{self, IdleConnections};

/// A broker under test: where it listens and which process it is.
#[derive(Debug, Clone)]
pub struct Target {
    /// The AMQP URL.
    pub url: String,
    /// Its process, for memory and CPU readings (`None`: not found, those readings are skipped).
    pub pid: Option<u32>,
    /// Whether it is RabbitMQ (which also reports its own memory accounting).
    pub rabbitmq: bool,
}

/// What the comparison does with a figure: how the two brokers' values compare, and the issue's
/// target for it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub enum Goal {
    /// More is better; the bundled broker should reach `times` RabbitMQ's figure.
    AtLeastTimes(f64),
    /// More is better; no target.
    Higher,
    /// Less is better; the bundled broker's figure should be at most this.
    AtMost(f64),
    /// Less is better; the bundled broker should be below RabbitMQ.
    BelowRabbitMq,
    /// Less is better; no target.
    Lower,
}

/// One figure a scenario reports.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// What it is, with its unit.
    pub name: &'static str,
    /// How it is judged.
    pub goal: Goal,
}

/// Settings the scenarios share.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seconds each load phase runs.
    pub duration_secs: f64,
    /// Idle connections opened in scenario 6.
    pub idle_connections: usize,
    /// The load tool's client.
    pub client: crate::options::Client,
}

/// One of the six scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario(pub u8);

/// Prefetch and multi-ack the consuming scenarios use (PerfTest's usual `-q 1000 --multi-ack-every 100`).
const PREFETCH: u16 = 1000;
const MULTI_ACK: u64 = 100;
/// Scenario 4's rate, messages per second.
const FIXED_RATE: f64 = 10_000.0;
/// How long the drain of scenario 5 may take, in multiples of the publish phase.
const DRAIN_LIMIT_FACTOR: f64 = 3.0;
/// Pause after opening the idle connections, so the broker's memory settles before it is read.
const SETTLE: Duration = Duration::from_secs(2);

impl Scenario {
    /// The description.
    pub fn title(self, settings: &Settings) -> String {
        match self.0 {
            1 => "1 producer, 1 consumer, 16 B, transient, no confirms, multi-ack".into(),
            2 => "as 1, with confirms (window 1000), persistent, durable queue".into(),
            3 => "1 KiB, 2 producers, 2 consumers, confirms (window 1000)".into(),
            4 => "fixed rate 10,000 msg/s, 1 KiB: latency".into(),
            5 => "publish only (no consumer), then consume only: 16 B".into(),
            _ => format!(
                "{} idle connections, one channel each: memory",
                settings.idle_connections
            ),
        }
    }

    /// The figures it reports, in order.
    pub fn metrics(self) -> Vec<Metric> {
        let m = |name, goal| Metric { name, goal };
        match self.0 {
            1..=3 => vec![
                m("consumed msg/s", Goal::AtLeastTimes(3.0)),
                m("published msg/s", Goal::Higher),
                m("latency p99 µs", Goal::Lower),
            ],
            4 => vec![
                m("latency p50 µs", Goal::Lower),
                m("latency p99 µs", Goal::AtMost(1000.0)),
                m("latency max µs", Goal::Lower),
                m("consumed msg/s", Goal::Higher),
            ],
            5 => vec![
                m("publish-only msg/s", Goal::Higher),
                m("consume-only msg/s", Goal::Higher),
            ],
            _ => vec![
                m("memory KiB/conn.", Goal::BelowRabbitMq),
                m("RSS KiB/conn.", Goal::Lower),
            ],
        }
    }

    /// Runs it on one broker; the values are in the order of [`Scenario::metrics`] (`NaN` where
    /// a broker has no such figure).
    pub async fn measure(self, target: &Target, settings: &Settings) -> anyhow::Result<Vec<f64>> {
        let base = RunOptions {
            uri: target.url.clone(),
            duration_secs: settings.duration_secs,
            prefetch: PREFETCH,
            multi_ack_every: MULTI_ACK,
            client: settings.client,
            quiet: true,
            json: true,
            ..RunOptions::default()
        };
        match self.0 {
            1 => throughput(&base).await,
            2 => {
                throughput(&RunOptions {
                    confirm_window: 1000,
                    persistent: true,
                    durable: true,
                    ..base
                })
                .await
            }
            3 => {
                throughput(&RunOptions {
                    size: 1024,
                    producers: 2,
                    consumers: 2,
                    confirm_window: 1000,
                    ..base
                })
                .await
            }
            4 => {
                let r = run::run(&RunOptions {
                    size: 1024,
                    rate: Some(FIXED_RATE),
                    ..base
                })
                .await?;
                let l = r.latency_us;
                Ok(vec![l.p50, l.p99, l.max, r.consume_rate])
            }
            5 => publish_then_consume(base).await,
            _ => idle_memory(target, settings.idle_connections).await,
        }
    }
}

async fn throughput(options: &RunOptions) -> anyhow::Result<Vec<f64>> {
    let r = run::run(options).await?;
    if r.nacked > 0 {
        anyhow::bail!("the broker nacked {} publishes", r.nacked);
    }
    Ok(vec![r.consume_rate, r.publish_rate, r.latency_us.p99])
}

async fn publish_then_consume(base: RunOptions) -> anyhow::Result<Vec<f64>> {
    let queue = format!(
        "amqp-perf-backlog-{}-{}",
        std::process::id(),
        crate::clock::now_nanos()
    );
    let published = run::run(&RunOptions {
        consumers: 0,
        queue: Some(queue.clone()),
        ..base.clone()
    })
    .await;
    let consumed = match &published {
        Ok(p) => {
            run::run(&RunOptions {
                producers: 0,
                queue: Some(queue.clone()),
                consume_count: Some(p.published),
                duration_secs: base.duration_secs * DRAIN_LIMIT_FACTOR,
                ..base.clone()
            })
            .await
        }
        Err(_) => Err(anyhow::anyhow!("the publish phase failed")),
    };
    delete_queue(&base.uri, &queue).await;
    Ok(vec![published?.publish_rate, consumed?.consume_rate])
}

async fn delete_queue(uri: &str, queue: &str) {
    if let Ok(connection) = run::connect(uri, "amqp-perf cleanup").await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}

/// Memory per idle connection, in KiB: the figure compared (the bundled broker's RSS; RabbitMQ's
/// own accounting of connection processes, which other clients of a shared RabbitMQ disturb
/// least), and RSS.
async fn idle_memory(target: &Target, count: usize) -> anyhow::Result<Vec<f64>> {
    let pid = target
        .pid
        .ok_or_else(|| anyhow::anyhow!("the broker's process was not found: no memory reading"))?;
    let before = MemoryReading::take(pid, target.rabbitmq).await?;
    let idle = IdleConnections::open(&target.url, count).await?;
    tokio::time::sleep(SETTLE).await;
    let after = MemoryReading::take(pid, target.rabbitmq).await?;
    idle.close().await;
    let per_connection_kib = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) => (a as f64 - b as f64) / count.max(1) as f64 / 1024.0,
        _ => f64::NAN,
    };
    let rss = per_connection_kib(Some(before.rss), Some(after.rss));
    let compared = if target.rabbitmq {
        per_connection_kib(before.connections, after.connections)
    } else {
        rss
    };
    Ok(vec![compared, rss])
}

/// A broker's memory at one moment.
#[derive(Debug)]
struct MemoryReading {
    rss: u64,
    connections: Option<u64>,
}

impl MemoryReading {
    async fn take(pid: u32, rabbitmq: bool) -> anyhow::Result<Self> {
        let connections = if rabbitmq {
            procstat::rabbitmq_connection_memory().await
        } else {
            None
        };
        Ok(Self {
            rss: procstat::rss_bytes(pid)?,
            connections,
        })
    }
}
