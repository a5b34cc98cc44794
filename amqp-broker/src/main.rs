//! `amqp-broker`: the bundled AMQP 0-9-1 broker as a foreground process.

use std::net::IpAddr;

use anyhow::Context as _;
use clap::Parser;

use amqp_broker::{Broker, Config, User};

/// A lightweight AMQP 0-9-1 broker that speaks to unmodified RabbitMQ clients.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// AMQP port (0 picks a free one and logs it).
    #[arg(long, default_value_t = 5672)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Directory for durable exchanges, queues, bindings and persistent messages; recovered from
    /// at start. Without it everything lives in memory only.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// A user as NAME:PASSWORD; repeat for more. Replaces the default guest:guest.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    users: Vec<User>,
    /// Largest message body accepted, in bytes.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    max_message_bytes: u64,
    /// Largest frame, in bytes, offered to clients.
    #[arg(long, default_value_t = 131_072)]
    frame_max: u32,
    /// Heartbeat interval proposed to clients, in seconds (0: none).
    #[arg(long, default_value_t = 60)]
    heartbeat: u16,
    /// Most connections served at once; further clients wait until one closes.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Most channels per connection, offered in connection.tune.
    #[arg(long, default_value_t = 2047, value_parser = clap::value_parser!(u16).range(1..))]
    channel_max: u16,
    /// Most consumers per channel (default: no limit).
    #[arg(long)]
    max_consumers_per_channel: Option<usize>,
    /// Flow control: bytes of message bodies held in memory at which publishing connections are
    /// blocked until consumers drain the queues (default: 40% of the machine's memory).
    #[arg(long, value_name = "BYTES")]
    memory_high_watermark_bytes: Option<u64>,
    /// Memory, in bytes, each durable queue may use for the messages it holds; persistent
    /// messages beyond it stay on disk only until consumers reach them.
    #[arg(long = "queue-memory-bytes", default_value_t = amqp_broker::DEFAULT_QUEUE_MEMORY_BUDGET_BYTES)]
    queue_memory_budget_bytes: u64,
    /// Most body bytes of ready messages any queue holds, as a RabbitMQ operator policy
    /// `max-length-bytes` on every queue (a queue's own lower `x-max-length-bytes` still
    /// applies); past it the queue's `x-overflow` decides (default drop-head). Default: none.
    #[arg(long, value_name = "BYTES")]
    queue_max_length_bytes: Option<u64>,
    /// Port of the management HTTP API (0 picks a free one and logs it).
    #[arg(long, default_value_t = 15672)]
    management_port: u16,
    /// Serve no management HTTP API.
    #[arg(long, conflicts_with = "management_port")]
    no_management: bool,
}

fn parse_user(s: &str) -> Result<User, String> {
    match s.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok(User::new(name, password)),
        _ => Err(format!("expected NAME:PASSWORD, got '{s}'")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = Config {
        bind: args.bind,
        port: args.port,
        ..Config::default()
    };
    if !args.users.is_empty() {
        config.users = args.users;
    }
    config.max_message_bytes = args.max_message_bytes;
    config.frame_max_bytes = args.frame_max.max(4096);
    config.heartbeat_secs = args.heartbeat;
    config.max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    config.channel_max = args.channel_max;
    config.max_consumers_per_channel = args.max_consumers_per_channel;
    if let Some(bytes) = args.memory_high_watermark_bytes {
        config.memory_high_watermark_bytes = bytes;
    }
    config.queue_memory_budget_bytes = args.queue_memory_budget_bytes;
    config.queue_max_length_bytes = args.queue_max_length_bytes;
    config.management_port = (!args.no_management).then_some(args.management_port);
    if let Some(dir) = &args.data_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    config.data_dir = args.data_dir;
    let broker = Broker::builder().config(config).start().await?;
    tracing::info!(port = broker.port(), "ready: {}", broker.amqp_url());
    if let Some(url) = broker.management_url() {
        tracing::info!("management API: {url}/api/overview");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    broker.shutdown().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
