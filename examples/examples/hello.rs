//! hello: the simple model (简单模式) of the notes, one producer, one queue, one listener, and
//! what acknowledgements (ACK概念) change when the listener fails.
//!
//! The producer sends "Hello World!" to three queues, each with a listener whose printer jams on
//! the first try. Only the acknowledgement mode differs:
//!
//! - `ack = "auto"` (the default, Spring's AUTO): the container acks when the function returns
//!   `Ok`; here it returns `ListenerError::requeue`, so the broker delivers the message again.
//! - `ack = "manual"`: the function acks through its `Acker`; here it nacks with requeue first.
//!   (Never acking at all keeps the message too, until the consumer's channel closes.)
//! - `ack = "none"`: RabbitMQ's "autoAck" (the notes' `basicConsume(QUEUE, true, consumer)`): the
//!   broker forgets the message once sent, so the failure loses it.
//!
//! ```text
//! cargo run -p examples --example hello                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example hello # RabbitMQ
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use amqp_core::{Acker, App, ListenerError, Metadata, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 3] = ["hello.auto", "hello.manual", "hello.none"];

#[derive(Debug, Serialize, Deserialize)]
pub struct Greeting {
    pub text: String,
}

/// One delivery, as a listener saw it: which mode, and whether the greeting got printed.
#[derive(Debug)]
struct Attempt {
    mode: &'static str,
    printed: bool,
}

/// Where listeners report their attempts.
type Attempts = UnboundedSender<Attempt>;

/// A printer that jams on a message's first delivery and works when it comes again.
fn try_print(
    mode: &'static str,
    meta: &Metadata,
    greeting: &Greeting,
    attempts: &Attempts,
) -> bool {
    let printed = meta.redelivered;
    if printed {
        println!("[{mode:>6}] printed '{}' (redelivered)", greeting.text);
    } else {
        println!("[{mode:>6}] printer jammed on '{}'", greeting.text);
    }
    let _ = attempts.send(Attempt { mode, printed });
    printed
}

#[rabbit_listener(
    id = "hello.auto",
    queue = "hello.auto",
    durable = false,
    auto_delete = true
)]
async fn auto_ack(
    meta: Metadata,
    State(attempts): State<Attempts>,
    greeting: Greeting,
) -> Result<(), ListenerError> {
    if try_print("auto", &meta, &greeting, &attempts) {
        Ok(()) // the container acks
    } else {
        Err(ListenerError::requeue("printer jammed")) // the container nacks with requeue
    }
}

#[rabbit_listener(
    id = "hello.manual",
    queue = "hello.manual",
    durable = false,
    auto_delete = true,
    ack = "manual"
)]
async fn manual_ack(
    acker: Acker,
    meta: Metadata,
    State(attempts): State<Attempts>,
    greeting: Greeting,
) -> Result<(), ListenerError> {
    if try_print("manual", &meta, &greeting, &attempts) {
        acker.ack().await?; // as the notes say: the ack comes last, once the work is done
    } else {
        acker.nack(true).await?; // back to the queue
    }
    Ok(())
}

#[rabbit_listener(
    id = "hello.none",
    queue = "hello.none",
    durable = false,
    auto_delete = true,
    ack = "none"
)]
async fn no_ack(
    meta: Metadata,
    State(attempts): State<Attempts>,
    greeting: Greeting,
) -> Result<(), ListenerError> {
    if try_print("none", &meta, &greeting, &attempts) {
        Ok(())
    } else {
        Err(ListenerError::requeue("printer jammed")) // too late: the broker already forgot it
    }
}

/// What happened in each acknowledgement mode.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Per mode ("auto", "manual", "none"): deliveries, and whether the greeting got printed.
    pub modes: BTreeMap<&'static str, (usize, bool)>,
}

/// Sends one greeting to each queue and watches what the listeners make of it.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let (tx, mut rx) = unbounded_channel();
    let app = app
        .listeners(LISTENERS)
        .state::<Attempts>(tx)
        .start()
        .await?;
    for mode in ["auto", "manual", "none"] {
        let greeting = Greeting {
            text: "Hello World!".into(),
        };
        app.template()
            .convert_and_send("", &format!("hello.{mode}"), &greeting)
            .await?;
    }
    let report = watch(&mut rx).await;
    app.shutdown().await;
    Ok(report)
}

/// Collects attempts until both acknowledging listeners printed, then half a second longer, to
/// show that nothing comes back to the `ack = "none"` one.
async fn watch(rx: &mut UnboundedReceiver<Attempt>) -> Report {
    let mut report = Report::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let quiet = Duration::from_millis(500);
    let printed = |r: &Report| r.modes.values().filter(|(_, printed)| *printed).count();
    loop {
        let wait_until = if printed(&report) < 2 {
            deadline
        } else {
            tokio::time::Instant::now() + quiet
        };
        let Ok(Some(a)) = tokio::time::timeout_at(wait_until, rx.recv()).await else {
            return report;
        };
        let (deliveries, printed) = report.modes.entry(a.mode).or_default();
        *deliveries += 1;
        *printed |= a.printed;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (mode, (deliveries, printed)) in &self.modes {
            let verdict = if *printed {
                "kept, printed on the retry"
            } else {
                "LOST"
            };
            let s = if *deliveries == 1 { "y" } else { "ies" };
            let mode = format!("\"{mode}\"");
            writeln!(f, "ack = {mode:<9} {deliveries} deliver{s}: {verdict}")?;
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
