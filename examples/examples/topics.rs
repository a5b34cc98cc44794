//! topics: the topic model (通配符 topic 模式) of the notes. Queues are bound to a topic exchange
//! with patterns over dot-separated words: `*` matches exactly one word (不多不少匹配一个词), `#`
//! zero or more. Log lines are published with `<facility>.<severity>` keys (and a few odd ones),
//! and the demo prints which key reached which queue.
//!
//! | queue                 | binding      |
//! |-----------------------|--------------|
//! | `logs.topic.kernel`   | `kern.*`     |
//! | `logs.topic.critical` | `*.critical` |
//! | `logs.topic.auth`     | `auth.#`     |
//!
//! ```text
//! cargo run -p examples --example topics                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example topics # RabbitMQ
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use amqp_core::{App, Metadata, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 3] = ["topics.kernel", "topics.critical", "topics.auth"];

/// The routing keys the demo publishes with.
pub const KEYS: [&str; 7] = [
    "kern.critical",
    "kern.info",
    "auth.critical",
    "auth",
    "auth.login.failed",
    "kern.disk.full",
    "cron.warning",
];

#[derive(Debug, Serialize, Deserialize)]
pub struct LogLine {
    pub text: String,
}

/// (queue, routing key) of every delivery.
type Seen = UnboundedSender<(String, String)>;

fn seen(meta: Metadata, seen: &Seen) {
    let _ = seen.send((meta.queue, meta.routing_key));
}

#[rabbit_listener(
    id = "topics.kernel",
    queue = "logs.topic.kernel",
    exchange = "logs.topic",
    exchange_type = "topic",
    key = "kern.*",
    durable = false,
    auto_delete = true
)]
async fn kernel(meta: Metadata, State(tx): State<Seen>, _line: LogLine) {
    seen(meta, &tx);
}

#[rabbit_listener(
    id = "topics.critical",
    queue = "logs.topic.critical",
    exchange = "logs.topic",
    exchange_type = "topic",
    key = "*.critical",
    durable = false,
    auto_delete = true
)]
async fn critical(meta: Metadata, State(tx): State<Seen>, _line: LogLine) {
    seen(meta, &tx);
}

#[rabbit_listener(
    id = "topics.auth",
    queue = "logs.topic.auth",
    exchange = "logs.topic",
    exchange_type = "topic",
    key = "auth.#",
    durable = false,
    auto_delete = true
)]
async fn auth(meta: Metadata, State(tx): State<Seen>, _line: LogLine) {
    seen(meta, &tx);
}

/// For every key published, the queues it reached (none for some).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub reached: BTreeMap<String, BTreeSet<String>>,
}

/// Publishes a line with each key and reports which queues each reached.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let (tx, mut rx) = unbounded_channel();
    let app = app.listeners(LISTENERS).state::<Seen>(tx).start().await?;
    let mut report = Report::default();
    for key in KEYS {
        let line = LogLine {
            text: format!("a line logged as {key}"),
        };
        app.template()
            .convert_and_send("logs.topic", key, &line)
            .await?;
        report.reached.insert(key.into(), BTreeSet::new());
    }
    // Whatever arrives until nothing more does for half a second.
    while let Ok(Some((queue, key))) =
        tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        report.reached.entry(key).or_default().insert(queue);
    }
    app.shutdown().await;
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for key in KEYS {
            let queues = &self.reached[key];
            let queues: Vec<_> = queues.iter().map(String::as_str).collect();
            let queues = if queues.is_empty() {
                "(no queue: dropped)".to_owned()
            } else {
                queues.join(", ")
            };
            writeln!(f, "{key:<18} -> {queues}")?;
        }
        Ok(())
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
