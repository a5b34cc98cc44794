//! rate_limited: peak shaving (削峰), the notes' rate limiting (接口限流, 流量控制). A flash sale
//! drops 1,000 orders on the shop at once; the order processor, which can only take about 100 a
//! second (its database, a payment provider), handles them at a steady 100/s because its
//! listener says `rate = "100/s"`. The backlog waits in the broker's queue, and the shop (the
//! publisher) is not slowed down at all: it is done in a fraction of a second.
//!
//! The rate is one token bucket shared by the listener's consumers (`concurrency = 4` here), so
//! adding consumers does not raise it.
//!
//! ```text
//! cargo run -p examples --example rate_limited                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example rate_limited # RabbitMQ
//! ```

use std::fmt;
use std::time::Duration;

use amqp_core::{App, State, rabbit_listener};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::time::Instant;

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 1] = ["rate_limited.orders"];

/// How many orders the flash sale drops at once.
pub const ORDERS: usize = 1_000;

/// An order from the flash sale.
#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    pub number: usize,
    pub item: String,
}

/// When each order was processed.
type Processed = UnboundedSender<Instant>;

#[rabbit_listener(
    id = "rate_limited.orders",
    queue = "rate_limited.orders",
    durable = false,
    auto_delete = true,
    rate = "100/s",
    concurrency = 4,
    prefetch = 50
)]
async fn process(State(processed): State<Processed>, order: Order) {
    // Reserving the stock and charging the card would go here: what the systems behind the
    // processor can do about 100 times a second.
    let _ = order;
    let _ = processed.send(Instant::now());
}

/// How the burst went.
#[derive(Debug)]
pub struct Report {
    /// From the first send to the last confirm.
    pub published_in: Duration,
    /// From the first send to the last order processed.
    pub processed_in: Duration,
    /// Orders processed in each second after the first send (the last one may be partial).
    pub per_second: Vec<usize>,
}

impl Report {
    /// The whole seconds of the steady part: every second but the first (start-up) and the last
    /// (partial).
    pub fn steady(&self) -> &[usize] {
        let n = self.per_second.len();
        if n <= 2 {
            &[]
        } else {
            &self.per_second[1..n - 1]
        }
    }

    /// The mean of [`steady`](Self::steady), in orders per second.
    pub fn steady_rate(&self) -> f64 {
        let steady = self.steady();
        steady.iter().sum::<usize>() as f64 / steady.len().max(1) as f64
    }
}

/// Sends the burst as fast as the broker confirms, then waits for every order to be processed.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let (tx, mut rx) = unbounded_channel();
    let app = app
        .listeners(LISTENERS)
        .state::<Processed>(tx)
        .start()
        .await?;
    let started = Instant::now();
    let template = app.template();
    futures::stream::iter(1..=ORDERS)
        .map(|number| async move {
            let order = Order {
                number,
                item: "headphones".into(),
            };
            template
                .convert_and_send("", "rate_limited.orders", &order)
                .await
        })
        .buffer_unordered(64) // many sends in flight, each confirmed
        .try_collect::<()>()
        .await?;
    let published_in = started.elapsed();
    println!(
        "[shop] {ORDERS} orders published in {} ms",
        published_in.as_millis()
    );
    let mut per_second = Vec::new();
    let mut last = started;
    let deadline = started + Duration::from_secs(60);
    for n in 1..=ORDERS {
        let Ok(Some(at)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            anyhow::bail!("only {} of {ORDERS} orders were processed", n - 1);
        };
        let second = (at - started).as_secs() as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
        if n % 100 == 0 {
            println!(
                "[processor] {n:>4} orders processed after {:.1} s",
                (at - started).as_secs_f64()
            );
        }
        last = at;
    }
    app.shutdown().await;
    Ok(Report {
        published_in,
        processed_in: last - started,
        per_second,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steady = self.steady();
        let (min, max) = (
            steady.iter().min().unwrap_or(&0),
            steady.iter().max().unwrap_or(&0),
        );
        writeln!(
            f,
            "published {ORDERS} orders in {:>6} ms (the shop was not slowed)",
            self.published_in.as_millis()
        )?;
        writeln!(
            f,
            "processed {ORDERS} orders in {:>6} ms",
            self.processed_in.as_millis()
        )?;
        writeln!(f, "per second: {:?}", self.per_second)?;
        writeln!(
            f,
            "steady rate: {:.1}/s on average (min {min}, max {max}; limit 100/s)",
            self.steady_rate()
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
