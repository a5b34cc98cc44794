//! `amqp-perf compare`: the six scenarios on the bundled broker and on RabbitMQ, in the
//! same run, alternating which broker goes first, with the ratio per figure.

mod bundled;
pub mod procstat;
mod scenarios;
mod table;

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use bundled::BundledBroker;
use scenarios::{Scenario, Settings, Target};

/// Settings of a comparison.
#[derive(Debug, Clone, Args)]
pub struct CompareOptions {
    /// The RabbitMQ to compare with.
    #[arg(long, default_value = crate::options::DEFAULT_URI)]
    pub rabbitmq_url: String,
    /// The bundled broker's binary (a release build); by default the `amqp-broker` beside this
    /// binary.
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Which scenarios to run, e.g. `1,4,6`.
    #[arg(long, value_delimiter = ',', default_values_t = [1u8, 2, 3, 4, 5, 6])]
    pub scenarios: Vec<u8>,
    /// Idle connections in scenario 6.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// The client producers and consumers use in scenarios 1 to 5.
    #[arg(long, value_enum, default_value_t = crate::options::Client::Raw)]
    pub client: crate::options::Client,
    /// Print the results as JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Everything a comparison measured, and on what.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// When it ran (UTC).
    pub date: String,
    /// Logical CPUs.
    pub nproc: usize,
    /// Memory, in MiB.
    pub memory_mib: u64,
    /// One-minute load average before and after.
    pub load_average: (f64, f64),
    /// The load tool's client (`lapin` or `raw`).
    pub client: String,
    /// How scenario 6's figure is measured.
    pub memory_method: &'static str,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// One scenario on both brokers.
#[derive(Debug, Serialize)]
pub struct ScenarioResult {
    /// Its number in the issue.
    pub id: u8,
    /// What it does.
    pub title: String,
    /// Which broker ran first.
    pub first: &'static str,
    /// One row per figure.
    pub rows: Vec<Row>,
    /// CPU use during the bundled broker's run.
    pub bundled_cpu: Cpu,
    /// CPU use during RabbitMQ's run.
    pub rabbitmq_cpu: Cpu,
}

/// One figure on both brokers.
#[derive(Debug, Serialize)]
pub struct Row {
    /// What it is.
    pub metric: &'static str,
    /// The bundled broker's value.
    pub bundled: f64,
    /// RabbitMQ's value.
    pub rabbitmq: f64,
    /// bundled ÷ RabbitMQ.
    pub ratio: f64,
    /// The target, in words, if it sets one.
    pub target: Option<String>,
    /// Whether it is met.
    pub met: Option<bool>,
}

/// CPU use of the broker and of this tool during one broker's run, in percent of one core.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Cpu {
    /// The broker process.
    pub broker_pct: f64,
    /// This load tool.
    pub tool_pct: f64,
}

const MEMORY_METHOD: &str = "scenario 6 reads the broker before opening the connections and 2 s \
     after, and divides the difference by their count. 'memory' (the compared figure): the \
     bundled broker's VmRSS (/proc/<pid>/status: everything the process holds), RabbitMQ's own \
     accounting of connection processes (rabbitmq-diagnostics memory_breakdown, connection_* \
     lines), since beam.smp reserves memory ahead and its RSS may not move, and other clients of a shared \
     RabbitMQ move it too; 'RSS': VmRSS of both (RabbitMQ: beam.smp)";

/// Runs the comparison and prints it.
pub async fn compare(options: &CompareOptions) -> anyhow::Result<()> {
    let binary = match &options.broker_bin {
        Some(path) => path.clone(),
        None => bundled::default_binary()
            .ok_or_else(|| anyhow::anyhow!("cannot locate this binary; pass --broker-bin"))?,
    };
    if let Some(bad) = options.scenarios.iter().find(|s| !(1..=6).contains(*s)) {
        anyhow::bail!("there is no scenario {bad}: the scenarios are 1 to 6");
    }
    if !(options.duration_secs.is_finite() && options.duration_secs > 0.0) {
        anyhow::bail!("--duration-secs must be a positive number of seconds");
    }
    let settings = Settings {
        duration_secs: options.duration_secs,
        idle_connections: idle_connection_count(options).await,
        client: options.client,
    };
    let rabbitmq = Target {
        url: options.rabbitmq_url.clone(),
        pid: procstat::rabbitmq_pid(),
        rabbitmq: true,
    };
    // Fail early on an unreachable RabbitMQ rather than after the bundled broker's first run.
    crate::run::connect(&rabbitmq.url, "amqp-perf probe")
        .await?
        .close(200, "probe".into())
        .await
        .ok();
    let load_before = procstat::load_average().unwrap_or(f64::NAN);
    let mut results = Vec::new();
    for (i, id) in options.scenarios.iter().enumerate() {
        let scenario = Scenario(*id);
        let bundled_first = i % 2 == 0;
        if !options.json {
            eprintln!(
                "scenario {id}: {} ({} first)",
                scenario.title(&settings),
                if bundled_first { "bundled" } else { "RabbitMQ" }
            );
        }
        let (bundled, rabbit) = if bundled_first {
            let b = on_bundled(scenario, &binary, &settings).await?;
            let r = on(scenario, &rabbitmq, &settings).await?;
            (b, r)
        } else {
            let r = on(scenario, &rabbitmq, &settings).await?;
            let b = on_bundled(scenario, &binary, &settings).await?;
            (b, r)
        };
        results.push(ScenarioResult {
            id: *id,
            title: scenario.title(&settings),
            first: if bundled_first { "bundled" } else { "rabbitmq" },
            rows: table::rows(scenario, (&bundled.0, bundled.1), (&rabbit.0, rabbit.1)),
            bundled_cpu: bundled.1,
            rabbitmq_cpu: rabbit.1,
        });
    }
    let comparison = Comparison {
        date: utc_now().await,
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_mib: memory_mib().unwrap_or(0),
        load_average: (load_before, procstat::load_average().unwrap_or(f64::NAN)),
        client: format!("{:?}", options.client).to_lowercase(),
        memory_method: MEMORY_METHOD,
        scenarios: results,
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", table::render(&comparison));
    }
    Ok(())
}

async fn on_bundled(
    scenario: Scenario,
    binary: &std::path::Path,
    settings: &Settings,
) -> anyhow::Result<(Vec<f64>, Cpu)> {
    let broker = BundledBroker::start(binary).await?;
    let target = Target {
        url: broker.url(),
        pid: Some(broker.pid()),
        rabbitmq: false,
    };
    let measured = on(scenario, &target, settings).await;
    broker.stop().await?;
    measured
}

/// Runs one scenario on one broker, with the CPU time both processes used meanwhile.
async fn on(
    scenario: Scenario,
    target: &Target,
    settings: &Settings,
) -> anyhow::Result<(Vec<f64>, Cpu)> {
    let me = std::process::id();
    let broker_before = target.pid.and_then(procstat::cpu_secs);
    let tool_before = procstat::cpu_secs(me);
    let started = Instant::now();
    let values = scenario.measure(target, settings).await?;
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let pct = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) => (a - b) / wall * 100.0,
        _ => f64::NAN,
    };
    let cpu = Cpu {
        broker_pct: pct(broker_before, target.pid.and_then(procstat::cpu_secs)),
        tool_pct: pct(tool_before, procstat::cpu_secs(me)),
    };
    Ok((values, cpu))
}

/// Sockets kept free on RabbitMQ for its other clients when scenario 6 is scaled down.
const SOCKET_HEADROOM: u64 = 100;

/// Scenario 6's count: as asked, unless RabbitMQ cannot take that many sockets (its limit follows
/// its `ulimit -n`, 832 sockets under the default 1024), in which case both brokers get the
/// largest count RabbitMQ can take with some headroom, and the scenario's title says so.
async fn idle_connection_count(options: &CompareOptions) -> usize {
    if !options.scenarios.contains(&6) {
        return options.connections;
    }
    match procstat::rabbitmq_free_sockets().await {
        Some(free) if (options.connections as u64) + SOCKET_HEADROOM > free => {
            let count = free.saturating_sub(SOCKET_HEADROOM).max(1) as usize;
            eprintln!(
                "RabbitMQ accepts only {free} more sockets (its file-descriptor limit): \
                 scenario 6 opens {count} connections on both brokers instead of {}",
                options.connections
            );
            count
        }
        _ => options.connections,
    }
}

async fn utc_now() -> String {
    tokio::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}
