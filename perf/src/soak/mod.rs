//! `amqp-perf soak`: minutes of churn against a running broker (`scripts/soak.sh` starts the
//! release `amqp-broker` and runs this). Many connections with several channels publish
//! persistent messages with confirms to durable queues and consume them; connections are cut
//! abruptly at random and reopened; one slow consumer lets its queue's backlog grow. Meanwhile
//! the broker's RSS is sampled every second and a probe connection measures open + declare +
//! close every 100 ms. At the end every queue is drained and each confirmed message must have
//! been consumed or drained: the run fails if one was lost.

mod ledger;
mod link;
mod probe;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::compare::procstat;
use ledger::Ledger;
use worker::{Role, Shared};

/// The queue the slow consumer reads (durable, like the others).
const SLOW_QUEUE: &str = "soak.slow";
/// How long consumers go on after publishers stop, before the final drain.
const SETTLE: Duration = Duration::from_secs(5);
/// Most passes of the final drain.
const DRAIN_PASSES: u32 = 10;

/// `soak` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SoakOptions {
    /// The broker's AMQP address (guest/guest, vhost /).
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub broker: SocketAddr,
    /// The broker's process id, for its resident memory.
    #[arg(long)]
    pub broker_pid: u32,
    /// How long the churn lasts, in minutes.
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// Connections (half publish, half consume; one consumer connection holds the slow consumer).
    #[arg(long, default_value_t = 500)]
    pub connections: usize,
    /// Channels per connection.
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    /// Durable work queues the channels share.
    #[arg(long, default_value_t = 16)]
    pub queues: usize,
    /// Messages per second each publishing channel sends (one confirm outstanding).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub body_bytes: usize,
    /// Every N-th message goes to the slow consumer's queue.
    #[arg(long, default_value_t = 20)]
    pub slow_every: u64,
    /// How long the slow consumer waits before each ack (prefetch 1).
    #[arg(long, default_value_t = 200)]
    pub slow_ack_ms: u64,
    /// Prefetch of the other consumers.
    #[arg(long, default_value_t = 50)]
    pub prefetch: u16,
    /// One random connection is cut (and reopened) this often.
    #[arg(long, default_value_t = 500)]
    pub cut_every_ms: u64,
}

/// The name of work queue `slot` of `queues`.
fn work_queue(slot: usize, queues: usize) -> String {
    format!("soak.work.{}", slot % queues.max(1))
}

pub async fn soak(options: &SoakOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.connections >= 2, "--connections must be at least 2");
    anyhow::ensure!(options.rate > 0.0, "--rate must be positive");
    declare_queues(options).await?;
    let shared = Arc::new(Shared {
        broker: options.broker,
        options: options.clone(),
        ledger: Ledger::default(),
        cuts: (0..options.connections)
            .map(|_| std::sync::Mutex::new(None))
            .collect(),
    });
    let (stop_publishing, publishing) = watch::channel(false);
    let (stop_consuming, consuming) = watch::channel(false);
    let (stop_watching, watching) = watch::channel(false);

    let rss = tokio::spawn(sample_rss(options.broker_pid, watching.clone()));
    let probe = probe::spawn(options.broker, watching.clone());
    let started = Instant::now();
    let mut publishers = Vec::new();
    let mut consumers = Vec::new();
    for index in 0..options.connections {
        let role = match index {
            i if i == options.connections - 1 => Role::Slow,
            i if i % 2 == 0 => Role::Publisher,
            _ => Role::Consumer,
        };
        let stop = if role == Role::Publisher {
            publishing.clone()
        } else {
            consuming.clone()
        };
        let task = tokio::spawn(worker::run(index, role, shared.clone(), stop));
        if role == Role::Publisher {
            publishers.push(task);
        } else {
            consumers.push(task);
        }
        // Opened a few at a time, so that start-up is not a connection storm.
        if index % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "{} connections x {} channels opening; churn for {} min",
        options.connections, options.channels, options.minutes
    );

    let chaos = tokio::spawn(cut_at_random(shared.clone(), watching.clone()));
    let run_for = Duration::from_secs_f64(options.minutes * 60.0);
    let mut report = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(30),
        Duration::from_secs(30),
    );
    while started.elapsed() < run_for {
        tokio::select! {
            _ = report.tick() => progress(&shared, options.broker_pid, started),
            _ = tokio::time::sleep(run_for.saturating_sub(started.elapsed())) => {}
        }
    }

    stop_publishing.send_replace(true);
    for task in publishers {
        let _ = task.await;
    }
    tokio::time::sleep(SETTLE).await;
    stop_consuming.send_replace(true);
    for task in consumers {
        let _ = task.await;
    }
    stop_watching.send_replace(true);
    let _ = chaos.await;
    let rss = rss.await.context("the RSS sampler")?;
    let probes = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    let drained = drain(options, &shared.ledger).await?;

    let ledger = &shared.ledger;
    let (confirmed, seen, lost) = ledger.tally();
    println!(
        "\n== soak summary ({:.1} min) ==",
        started.elapsed().as_secs_f64() / 60.0
    );
    println!(
        "messages: {confirmed} confirmed, {seen} distinct seen ({} deliveries, {drained} drained at the end), {} nacked, LOST {lost}",
        Ledger::get(&ledger.deliveries),
        Ledger::get(&ledger.nacked)
    );
    println!(
        "connections: {} cut, {} reopened, {} failed attempts",
        Ledger::get(&ledger.cuts),
        Ledger::get(&ledger.reconnects),
        Ledger::get(&ledger.connect_failures)
    );
    print_rss(&rss);
    print_probes(&probes);
    if lost > 0 {
        let ids = ledger.lost_ids(10);
        let slow: Vec<bool> = ids.iter().map(|id| id % options.slow_every == 0).collect();
        println!("lost ids (first 10): {ids:?}; to the slow queue: {slow:?}");
    }
    anyhow::ensure!(lost == 0, "{lost} confirmed messages were lost");
    Ok(())
}

async fn declare_queues(options: &SoakOptions) -> anyhow::Result<()> {
    let connection = connect_direct(options.broker, "soak setup").await?;
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let names = (0..options.queues)
        .map(|slot| work_queue(slot, options.queues))
        .chain([SLOW_QUEUE.to_owned()]);
    for name in names {
        channel
            .queue_declare(name.as_str().into(), durable, FieldTable::default())
            .await
            .with_context(|| format!("declare {name}"))?;
    }
    connection.close(200, "declared".into()).await?;
    Ok(())
}

async fn connect_direct(broker: SocketAddr, name: &str) -> anyhow::Result<Connection> {
    let uri = format!("amqp://guest:guest@{broker}/%2f?frame_max=8192");
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(&uri, properties)
        .await
        .with_context(|| format!("{name}: cannot connect to {broker}"))
}

/// Cuts a random connection every `cut_every_ms` until `stop`.
async fn cut_at_random(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(shared.options.cut_every_ms));
    // xorshift: a fixed seed makes runs comparable.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let index = (state % shared.cuts.len() as u64) as usize;
        if let Some(cut) = shared.cuts[index].lock().expect("cut slot").take() {
            cut.cut();
            Ledger::add(&shared.ledger.cuts, 1);
        }
    }
}

/// The broker's RSS every second until `stop`: (seconds since start, bytes).
async fn sample_rss(pid: u32, mut stop: watch::Receiver<bool>) -> Vec<(f64, u64)> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if let Ok(bytes) = procstat::rss_bytes(pid) {
            samples.push((started.elapsed().as_secs_f64(), bytes));
        }
    }
    samples
}

/// Takes every message left in the queues (`basic.get`, no ack), in passes a second apart until
/// one finds nothing (a closing connection's unacked messages come back to their queue as the
/// broker finishes closing it); returns how many.
async fn drain(options: &SoakOptions, ledger: &Ledger) -> anyhow::Result<u64> {
    let connection = connect_direct(options.broker, "soak drain").await?;
    let channel = connection.create_channel().await?;
    let mut drained = 0;
    for pass in 1..=DRAIN_PASSES {
        let mut this_pass = 0;
        let names = (0..options.queues)
            .map(|slot| work_queue(slot, options.queues))
            .chain([SLOW_QUEUE.to_owned()]);
        for name in names {
            let no_ack = BasicGetOptions { no_ack: true };
            while let Some(message) = channel.basic_get(name.as_str().into(), no_ack).await? {
                ledger.seen(&message.delivery.properties);
                this_pass += 1;
            }
        }
        println!("drain pass {pass}: {this_pass} messages");
        drained += this_pass;
        if this_pass == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    connection.close(200, "drained".into()).await?;
    Ok(drained)
}

fn progress(shared: &Shared, pid: u32, started: Instant) {
    let (confirmed, seen, _) = shared.ledger.tally();
    let rss = procstat::rss_bytes(pid).map_or(0.0, mib);
    println!(
        "{:>5.0} s: {confirmed} confirmed, {seen} seen, {} cuts, {} reconnects, broker RSS {rss:.1} MiB",
        started.elapsed().as_secs_f64(),
        Ledger::get(&shared.ledger.cuts),
        Ledger::get(&shared.ledger.reconnects),
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_rss(samples: &[(f64, u64)]) {
    let Some(&(_, last)) = samples.last() else {
        println!("broker RSS: no samples");
        return;
    };
    let max = samples.iter().map(|&(_, b)| b).max().unwrap_or(0);
    // The peak of the first and of the last minute: bounded memory keeps them close.
    let end = samples.last().map_or(0.0, |&(t, _)| t);
    let peak_within = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|&&(t, _)| t >= from && t < to)
            .map(|&(_, b)| b)
            .max()
            .unwrap_or(0)
    };
    println!(
        "broker RSS: max {:.1} MiB, final {:.1} MiB; peak in the first minute {:.1} MiB, in the last minute {:.1} MiB ({} samples)",
        mib(max),
        mib(last),
        mib(peak_within(0.0, 60.0)),
        mib(peak_within(end - 60.0, end + 1.0)),
        samples.len()
    );
}

fn print_probes(results: &[Option<Duration>]) {
    let mut ok: Vec<Duration> = results.iter().flatten().copied().collect();
    let failed = results.len() - ok.len();
    ok.sort();
    let at = |q: f64| {
        ok.get(((ok.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "probe (open + declare + close every 100 ms): {} done, {failed} failed; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ok.len(),
        at(0.50),
        at(0.99),
        ok.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    );
}
