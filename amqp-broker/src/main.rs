//! `amqp-broker`: the bundled AMQP 0-9-1 broker as a foreground process, and `amqp-broker ctl`
//! to inspect and manage a running one through its management API.

mod ctl;

use std::net::IpAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use amqp_broker::{Broker, Config, TlsFiles, User};

/// A lightweight AMQP 0-9-1 broker that speaks to unmodified RabbitMQ clients.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    /// Without a command, the broker runs.
    #[command(subcommand)]
    command: Option<Command>,
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
    /// A user as NAME:PASSWORD (an administrator with full permissions on the vhost /);
    /// repeat for more. Replaces the default guest:guest.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    users: Vec<User>,
    /// Users who may connect from loopback addresses only, comma-separated (RabbitMQ's
    /// loopback_users; default: guest). Give it without a value to let every user connect
    /// from anywhere.
    #[arg(long, value_name = "NAMES", num_args = 0..=1, value_delimiter = ',')]
    loopback_users: Option<Vec<String>>,
    /// A RabbitMQ definitions file (JSON, as `rabbitmqctl export_definitions` writes it) to
    /// import at start: users, vhosts, permissions, exchanges, queues, bindings.
    #[arg(long, value_name = "FILE")]
    definitions: Option<std::path::PathBuf>,
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
    /// Port of the management HTTP API and of Prometheus' `/metrics` (0 picks a free one and
    /// logs it).
    #[arg(long, default_value_t = 15672)]
    management_port: u16,
    /// Serve no management HTTP API.
    #[arg(long, conflicts_with = "management_port")]
    no_management: bool,
    /// Also serve amqps (AMQP over TLS) with this certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// amqps port (0 picks a free one and logs it).
    #[arg(long, default_value_t = amqp_broker::DEFAULT_TLS_PORT, requires = "tls_cert")]
    tls_port: u16,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists and manages a running broker through its management API (rabbitmqctl's verbs).
    Ctl(ctl::Ctl),
}

fn parse_user(s: &str) -> Result<User, String> {
    match s.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok(User::new(name, password)),
        _ => Err(format!("expected NAME:PASSWORD, got '{s}'")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Ctl(ctl)) = args.command {
        // One line with the causes, as rabbitmqctl reports, and a failing exit status.
        if let Err(e) = ctl.run().await {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut config = Config {
        bind: args.bind,
        port: args.port,
        ..Config::default()
    };
    if !args.users.is_empty() {
        config.users = args.users;
    }
    if let Some(users) = args.loopback_users {
        config.loopback_users = users.into_iter().filter(|u| !u.is_empty()).collect();
    }
    config.definitions_file = args.definitions;
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
    if let (Some(cert_chain_path), Some(key_path)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsFiles {
            cert_chain_path,
            key_path,
        });
    }
    config.tls_port = args.tls_port;
    // Listened for before starting: a SIGTERM that arrives while the store and the definitions
    // load (the port already accepts) still ends in an orderly shutdown.
    let stop = shutdown_signal();
    let broker = Broker::builder().config(config).start().await?;
    tracing::info!(port = broker.port(), "ready: {}", broker.amqp_url());
    if let Some(url) = broker.amqps_url() {
        tracing::info!(port = broker.tls_port(), "ready (TLS): {url}");
    }
    if let Some(url) = broker.management_url() {
        tracing::info!("management API: {url}/api/overview; Prometheus metrics: {url}/metrics");
    }
    stop.await;
    tracing::info!("shutting down");
    broker.shutdown().await?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C; on Unix both are listened for from the call on, not from
/// the first poll.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let listen = |kind| {
        let signal = tokio::signal::unix::signal(kind);
        async move {
            match signal {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!("cannot listen for a shutdown signal: {e}");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    #[cfg(unix)]
    let (ctrl_c, term) = (
        listen(tokio::signal::unix::SignalKind::interrupt()),
        listen(tokio::signal::unix::SignalKind::terminate()),
    );
    #[cfg(not(unix))]
    let (ctrl_c, term) = (
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!("cannot listen for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
        },
        std::future::pending::<()>(),
    );
    async move {
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
}
