//! routing: the routing model (定向 direct, 路由模式) of the notes. Each queue is bound to a direct
//! exchange with routing keys, and the producer gives every message a routing key: here a log
//! line's severity. A message reaches the queues bound with exactly its key, and is dropped when
//! none is: the error file gets errors only, the console info, warnings and errors, and nobody
//! asked for debug.
//!
//! ```text
//! cargo run -p examples --example routing                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example routing # RabbitMQ
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use amqp_core::{App, Metadata, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 2] = ["routing.error_file", "routing.console"];

/// The exchange log lines are published to, with their severity as the routing key.
pub const EXCHANGE: &str = "logs.direct";

#[derive(Debug, Serialize, Deserialize)]
pub struct LogLine {
    pub text: String,
}

/// Which queue got a line of which severity.
type Seen = UnboundedSender<(String, String)>;

#[rabbit_listener(
    id = "routing.error_file",
    queue = "logs.direct.errors",
    exchange = "logs.direct",
    key = "error",
    durable = false,
    auto_delete = true
)]
async fn error_file(meta: Metadata, State(seen): State<Seen>, line: LogLine) {
    println!("[error file] {}: {}", meta.routing_key, line.text);
    let _ = seen.send((meta.queue, meta.routing_key));
}

#[rabbit_listener(
    id = "routing.console",
    queue = "logs.direct.console",
    exchange = "logs.direct",
    key = ["info", "warning", "error"],
    durable = false,
    auto_delete = true
)]
async fn console(meta: Metadata, State(seen): State<Seen>, line: LogLine) {
    println!("[console   ] {}: {}", meta.routing_key, line.text);
    let _ = seen.send((meta.queue, meta.routing_key));
}

/// The severities each queue received, in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub queues: BTreeMap<String, Vec<String>>,
}

/// Publishes one line of each severity and reports where each went.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let (tx, mut rx) = unbounded_channel();
    let app = app.listeners(LISTENERS).state::<Seen>(tx).start().await?;
    for (severity, text) in [
        ("debug", "cache miss for /index.html"),
        ("info", "user ann logged in"),
        ("warning", "disk 91% full"),
        ("error", "payment service unreachable"),
    ] {
        let line = LogLine { text: text.into() };
        app.template()
            .convert_and_send(EXCHANGE, severity, &line)
            .await?;
    }
    // Whatever arrives until nothing more does for half a second.
    let mut report = Report::default();
    while let Ok(Some((queue, severity))) =
        tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        report.queues.entry(queue).or_default().push(severity);
    }
    app.shutdown().await;
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (queue, severities) in &self.queues {
            writeln!(f, "{queue:<20} got {}", severities.join(", "))?;
        }
        writeln!(f, "debug went to no queue: none is bound with that key")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,amqp_core::app=info".into()),
        )
        .init();
    let report = run(App::new()).await?;
    print!("\n{report}");
    Ok(())
}
