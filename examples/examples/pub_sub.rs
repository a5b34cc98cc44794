//! pub_sub: the publish/subscribe model (发布/订阅, fanout 广播) of the notes. The producer sends
//! log lines to a fanout exchange; every subscriber has its own queue bound to it and gets every
//! line. The exchange only forwards, it stores nothing (交换机只负责转发 不负责存储): a subscriber
//! that starts after a line was sent never sees that line.
//!
//! The screen subscriber starts first; line 1 is sent; then the archive subscriber starts (as a
//! second app, the way another service would) and lines 2 and 3 reach both.
//!
//! ```text
//! cargo run -p examples --example pub_sub                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example pub_sub # RabbitMQ
//! ```

use std::fmt;
use std::time::Duration;

use amqp_core::{App, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 2] = ["pub_sub.screen", "pub_sub.archive"];

#[derive(Debug, Serialize, Deserialize)]
pub struct LogLine {
    pub text: String,
}

/// Which subscriber got which line.
type Seen = UnboundedSender<(&'static str, String)>;

// Each subscriber's queue is its own, exclusive to its connection and gone with it.
#[rabbit_listener(
    id = "pub_sub.screen",
    queue = "logs.fanout.screen",
    exchange = "logs.fanout",
    exchange_type = "fanout",
    durable = false,
    exclusive = true
)]
async fn screen(State(seen): State<Seen>, line: LogLine) {
    println!("[screen ] {}", line.text);
    let _ = seen.send(("screen", line.text));
}

#[rabbit_listener(
    id = "pub_sub.archive",
    queue = "logs.fanout.archive",
    exchange = "logs.fanout",
    exchange_type = "fanout",
    durable = false,
    exclusive = true
)]
async fn archive(State(seen): State<Seen>, line: LogLine) {
    println!("[archive] {}", line.text);
    let _ = seen.send(("archive", line.text));
}

/// The lines each subscriber got.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub screen: Vec<String>,
    pub archive: Vec<String>,
}

/// Starts the screen, sends a line, starts the archive, sends two more.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let (tx, mut rx) = unbounded_channel();
    let screen = app
        .listeners(["pub_sub.screen"])
        .state::<Seen>(tx.clone())
        .start()
        .await?;
    let template = screen.template().clone();
    let send = |text: &str| {
        let line = LogLine { text: text.into() };
        let template = template.clone();
        async move { template.convert_and_send("logs.fanout", "", &line).await }
    };
    send("1: service started").await?;
    let mut report = Report::default();
    collect(&mut rx, &mut report, 1).await;

    println!("-- the archive subscribes now --");
    // Another app on the same broker: the one the first app runs on (its embedded one, maybe).
    let archive = App::new()
        .url(screen.url())
        .listeners(["pub_sub.archive"])
        .state::<Seen>(tx)
        .start()
        .await?;
    send("2: user ann logged in").await?;
    send("3: user bob logged in").await?;
    collect(&mut rx, &mut report, 4).await;

    archive.shutdown().await;
    screen.shutdown().await;
    Ok(report)
}

/// Waits for `n` more lines, then half a second longer for any that should not come.
async fn collect(
    rx: &mut UnboundedReceiver<(&'static str, String)>,
    report: &mut Report,
    n: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    loop {
        let wait_until = if got < n {
            deadline
        } else {
            tokio::time::Instant::now() + Duration::from_millis(500)
        };
        let Ok(Some((who, text))) = tokio::time::timeout_at(wait_until, rx.recv()).await else {
            return;
        };
        got += 1;
        match who {
            "screen" => report.screen.push(text),
            _ => report.archive.push(text),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "screen  (subscribed from the start) got {:?}",
            self.screen
        )?;
        writeln!(
            f,
            "archive (subscribed after line 1)   got {:?}",
            self.archive
        )?;
        writeln!(
            f,
            "every subscriber got every line sent while it was subscribed; line 1 was not kept for the archive"
        )
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
