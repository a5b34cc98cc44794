//! work_queues: the work model (工作模型) of the notes: one queue of time-consuming tasks shared by
//! a fast and a slow worker. Each task goes to exactly one worker, and with `prefetch = 1`
//! (the notes' `channel.basicQos(1)`) a worker gets its next task only after acknowledging the
//! last one, so the fast worker takes more of them (能者多劳). Without it the broker would deal
//! the tasks out in turn, half to each, and the slow worker would hold up its half.
//!
//! ```text
//! cargo run -p examples --example work_queues                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example work_queues # RabbitMQ
//! ```

use std::fmt;
use std::time::Duration;

use amqp_core::{App, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 2] = ["work_queues.fast", "work_queues.slow"];

/// How many thumbnails the demo asks for.
pub const TASKS: usize = 20;

/// A thumbnail to render.
#[derive(Debug, Serialize, Deserialize)]
pub struct Render {
    pub image: String,
}

/// Which worker rendered which image.
type Done = UnboundedSender<(&'static str, String)>;

async fn render(worker: &'static str, time: Duration, task: Render, done: &Done) {
    tokio::time::sleep(time).await; // the time-consuming part
    println!("[{worker}] rendered {}", task.image);
    let _ = done.send((worker, task.image));
}

#[rabbit_listener(
    id = "work_queues.fast",
    queue = "tasks",
    durable = false,
    auto_delete = true,
    prefetch = 1
)]
async fn fast_worker(State(done): State<Done>, task: Render) {
    render("fast", Duration::from_millis(20), task, &done).await;
}

#[rabbit_listener(
    id = "work_queues.slow",
    queue = "tasks",
    durable = false,
    auto_delete = true,
    prefetch = 1
)]
async fn slow_worker(State(done): State<Done>, task: Render) {
    render("slow", Duration::from_millis(200), task, &done).await;
}

/// How many tasks each worker handled.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub fast: usize,
    pub slow: usize,
    pub elapsed: Duration,
}

/// Queues the tasks and waits until every one was rendered.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let (tx, mut rx) = unbounded_channel();
    let app = app.listeners(LISTENERS).state::<Done>(tx).start().await?;
    let started = tokio::time::Instant::now();
    for n in 1..=TASKS {
        let task = Render {
            image: format!("photo-{n:02}.jpg"),
        };
        app.template().convert_and_send("", "tasks", &task).await?;
    }
    let (mut fast, mut slow) = (0, 0);
    while fast + slow < TASKS {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(("fast", _))) => fast += 1,
            Ok(Some(_)) => slow += 1,
            _ => anyhow::bail!("only {} of {TASKS} tasks were rendered", fast + slow),
        }
    }
    let elapsed = started.elapsed();
    app.shutdown().await;
    Ok(Report {
        fast,
        slow,
        elapsed,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fast worker (20 ms a task):  {:>2} tasks", self.fast)?;
        writeln!(f, "slow worker (200 ms a task): {:>2} tasks", self.slow)?;
        writeln!(
            f,
            "{} tasks in {} ms: each went to one worker, and the fast one did more",
            self.fast + self.slow,
            self.elapsed.as_millis()
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
