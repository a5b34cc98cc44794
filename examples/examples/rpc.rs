//! rpc: request/reply over RabbitMQ, the sixth pattern of RabbitMQ's tutorials (the notes'
//! 异步通信 turned synchronous when the caller needs the answer). A price service is one annotated
//! function: what it returns is sent back to the request's `reply_to`. The client calls it with
//! `Template::convert_send_and_receive` (over direct reply-to) and gives up after a timeout.
//!
//! Three calls: a price, an error answered as a value (`Err` from the function would only reject
//! the request, leaving the client to time out), and an item whose price the service takes too
//! long to work out, so the client stops waiting and carries on.
//!
//! ```text
//! cargo run -p examples --example rpc                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example rpc # RabbitMQ
//! AMQP_URL=... cargo run -p examples --example rpc -- --serve   # only the service, until Ctrl-C
//! ```

use std::fmt;
use std::time::Duration;

use amqp_core::{App, Error, ListenerError, Template, rabbit_listener};
use serde::{Deserialize, Serialize};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 1] = ["rpc.prices"];

/// How long the client waits for an answer.
pub const TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize)]
pub struct QuoteRequest {
    pub item: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub item: String,
    pub total_cents: u64,
}

/// The service's answer: a quote, or why there is none.
pub type Answer = Result<Quote, String>;

/// The price service: returns the answer, which the framework sends back to the caller.
#[rabbit_listener(
    id = "rpc.prices",
    queue = "rpc.prices",
    durable = false,
    auto_delete = true
)]
async fn prices(request: QuoteRequest) -> Result<Answer, ListenerError> {
    println!("[service] pricing {} x {}", request.quantity, request.item);
    let unit_cents = match request.item.as_str() {
        "coffee" => 350,
        "bagel" => 225,
        "wedding cake" => {
            tokio::time::sleep(TIMEOUT * 2).await; // asks the bakery: slower than callers wait
            12_000
        }
        other => return Ok(Err(format!("no price for '{other}'"))),
    };
    Ok(Ok(Quote {
        item: request.item,
        total_cents: unit_cents * u64::from(request.quantity),
    }))
}

/// What the client got for each call.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Answered(Answer),
    TimedOut,
}

/// The client's calls and their outcomes.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub calls: Vec<(String, Outcome)>,
}

/// Asks the service for a quote and waits up to [`TIMEOUT`].
pub async fn quote(template: &Template, item: &str, quantity: u32) -> anyhow::Result<Outcome> {
    let request = QuoteRequest {
        item: item.into(),
        quantity,
    };
    let result = template
        .convert_send_and_receive("", "rpc.prices", &request, TIMEOUT)
        .await;
    match result {
        Ok(answer) => Ok(Outcome::Answered(answer)),
        Err(Error::ReplyTimeout { .. }) => Ok(Outcome::TimedOut),
        Err(e) => Err(e.into()),
    }
}

/// Starts the service and calls it three times.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let app = app.listeners(LISTENERS).start().await?;
    let mut calls = Vec::new();
    for (item, quantity) in [("coffee", 2), ("caviar", 1), ("wedding cake", 1)] {
        let outcome = quote(app.template(), item, quantity).await?;
        println!("[client ] {quantity} x {item}: {outcome:?}");
        calls.push((format!("{quantity} x {item}"), outcome));
    }
    // Shutting down lets the service finish the cake; its late answer finds nobody waiting.
    app.shutdown().await;
    Ok(Report { calls })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (call, outcome) in &self.calls {
            match outcome {
                Outcome::Answered(Ok(q)) => writeln!(
                    f,
                    "{call:<16} -> {}.{:02}",
                    q.total_cents / 100,
                    q.total_cents % 100
                )?,
                Outcome::Answered(Err(why)) => writeln!(f, "{call:<16} -> error: {why}")?,
                Outcome::TimedOut => writeln!(f, "{call:<16} -> no answer within {TIMEOUT:?}")?,
            }
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
    if std::env::args().any(|arg| arg == "--serve") {
        return Ok(App::new().listeners(LISTENERS).run().await?);
    }
    let report = run(App::new()).await?;
    print!("\n{report}");
    Ok(())
}
