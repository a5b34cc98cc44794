//! idempotent_payment: the notes' duplicate delivery (如何避免消息的重复消费: 用户取钱后 银行给用户发送扣款
//! 消息). Withdrawal notices reach the payment service more than once, yet each is debited and
//! texted to the customer exactly once, because the listener is `idempotent`: the framework keeps
//! each message id (here the withdrawal's own id) in a store, marks it done before the ack, and
//! acknowledges a later copy without running the handler (the notes' global id, 全局ID).
//!
//! Two ways a notice arrives twice:
//! - a redelivery: instance A of the service debits, then dies before its ack reaches the broker
//!   (`ack = "manual"`, never acked, its connection closed), so the broker hands it to instance B;
//! - a duplicate publish: the bank's core system sends a notice again, with the same id.
//!
//! The store is Redis with `REDIS_URL` (shared by every process, the notes' setnx), in memory
//! otherwise (A and B share it only because they run in this one process). Not covered: a crash
//! between the debit and the "done" record runs the notice again once the lease lapses (at least
//! once, never zero); closing that gap takes the debit and the record in one transaction.
//!
//! ```text
//! cargo run -p examples --example idempotent_payment                                 # nothing to install
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --example idempotent_payment # records in Redis
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example idempotent_payment
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqp_core::idempotent::{Idempotency, IdempotencyStore, MemoryStore, RedisStore};
use amqp_core::types::BasicProperties;
use amqp_core::{App, ListenerError, Message, MessageConverter, State, Template, rabbit_listener};
use serde::{Deserialize, Serialize};

/// The listeners: the bank's SMS gateway, and the two instances of the payment service.
pub const SMS: &str = "payments.sms";
pub const INSTANCE_A: &str = "payments.instance_a";
pub const INSTANCE_B: &str = "payments.instance_b";
const WITHDRAWALS: &str = "payments.withdrawals";

/// The account's balance before the demo, in dollars.
pub const OPENING: i64 = 1_000;

/// A withdrawal notice: `id` is the bank's transaction id, sent as the message id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdrawal {
    pub id: String,
    pub account: String,
    pub amount: i64,
}

/// The bank's books: what was withdrawn from the account, and the texts sent.
#[derive(Debug, Clone, Default)]
pub struct Books {
    pub withdrawn: i64,
    pub debited: Vec<String>,
    pub texts: usize,
}

/// The books, shared by the service's instances (one process here; a database in real life).
type Ledger = Arc<Mutex<Books>>;
type Handled = Result<(), ListenerError>;

/// Debits and texts the customer: the side effects that must happen once.
async fn debit_and_text(instance: &str, books: &Ledger, sms: &Template, w: Withdrawal) -> Handled {
    let balance = {
        let mut books = books.lock().expect("books");
        books.withdrawn += w.amount;
        books.debited.push(w.id.clone());
        OPENING - books.withdrawn
    };
    println!("[{instance}] debited ${} ({})", w.amount, w.id);
    let text = format!("${} withdrawn, balance ${balance}", w.amount);
    sms.convert_and_send("", SMS, &(w.account, text)).await?;
    Ok(())
}

// Both instances consume one queue; x-expires deletes it 10 s after the demo.
#[rabbit_listener(id = "payments.instance_a", queue = "payments.withdrawals", durable = false,
    arguments("x-expires" = 10000), idempotent, ack = "manual")]
async fn instance_a(State(books): State<Ledger>, sms: Template, w: Withdrawal) -> Handled {
    debit_and_text("instance A", &books, &sms, w).await
    // ... and the process dies here, before `acker.ack()`: the broker still holds the message.
}

#[rabbit_listener(id = "payments.instance_b", queue = "payments.withdrawals", durable = false,
    arguments("x-expires" = 10000), idempotent)]
async fn instance_b(State(books): State<Ledger>, sms: Template, w: Withdrawal) -> Handled {
    debit_and_text("instance B", &books, &sms, w).await
}

#[rabbit_listener(
    id = "payments.sms",
    queue = "payments.sms",
    durable = false,
    auto_delete = true
)]
async fn text_customer(State(books): State<Ledger>, (account, text): (String, String)) {
    books.lock().expect("books").texts += 1;
    println!("[sms to {account}] {text}");
}

/// The outcome of the demo.
#[derive(Debug)]
pub struct Report {
    /// Where the idempotency records were: a Redis URL, or memory.
    pub store: String,
    /// The notices, each once, in the order they were sent.
    pub notices: Vec<Withdrawal>,
    pub books: Books,
    /// Copies still in the queue at the end (none: every copy was handled or deduplicated).
    pub left_in_queue: usize,
}

/// The bank's day: three withdrawals, one redelivered after a crash, one published twice. The
/// idempotency records go to Redis at `redis_url`, or else to memory.
pub async fn run(app: App, redis_url: Option<&str>) -> anyhow::Result<Report> {
    let store: Arc<dyn IdempotencyStore> = match redis_url {
        Some(url) => Arc::new(RedisStore::connect(url).await?),
        None => Arc::new(MemoryStore::new()),
    };
    let records = Idempotency::shared(store).keep(Duration::from_secs(3600));
    let ledger = Ledger::default();
    let bank = app.listeners([SMS]).state(ledger.clone()).start().await?;
    let instance = |id: &str| {
        let app = App::new().url(bank.url()).listeners([id]);
        app.state(ledger.clone())
            .idempotency(records.clone())
            .start()
    };
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos(); // unique Redis keys
    let notice = |n: u32, amount| Withdrawal {
        id: format!("w{n}-{run_id:x}"),
        account: "ann".into(),
        amount,
    };
    let notices = vec![notice(1, 120), notice(2, 60), notice(3, 300)];

    let a = instance(INSTANCE_A).await?;
    publish(bank.template(), &notices[0]).await?;
    wait_for(&ledger, |b| b.debited.len() == 1).await?;
    let b = instance(INSTANCE_B).await?; // up before A goes, so the queue keeps a consumer
    let w1 = &notices[0].id;
    println!("[instance A] dies before its ack: the broker delivers {w1} again");
    a.shutdown().await; // closes A's connection: its unacked message goes back to the queue
    println!("[bank] sends {} twice (the same message id)", notices[1].id);
    for w in [&notices[1], &notices[1], &notices[2]] {
        publish(bank.template(), w).await?;
    }
    wait_for(&ledger, |b| b.debited.len() >= 3 && b.texts >= 3).await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // time for a wrong second run to show
    b.shutdown().await;
    let (mut left_in_queue, wait) = (0, Duration::from_millis(200));
    while let Some(_copy) = bank.template().receive(WITHDRAWALS, wait).await? {
        left_in_queue += 1;
    }
    bank.shutdown().await;
    let books = ledger.lock().expect("books").clone();
    Ok(Report {
        store: redis_url.unwrap_or("memory (this process)").to_owned(),
        notices,
        books,
        left_in_queue,
    })
}

/// Sends a notice with its transaction id as the message id, as the bank's core system does.
async fn publish(template: &Template, w: &Withdrawal) -> anyhow::Result<()> {
    let properties = BasicProperties::default()
        .with_message_id(w.id.clone().into())
        .with_content_type("application/json".into());
    let message = Message::new(template.converter().serialize(w)?).with_properties(properties);
    Ok(template.send("", WITHDRAWALS, message).await?)
}

/// Waits until the books satisfy `done` (at most 10 s).
async fn wait_for(ledger: &Ledger, done: impl Fn(&Books) -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&ledger.lock().expect("books")) {
        anyhow::ensure!(
            deadline > tokio::time::Instant::now(),
            "waited 10 s: {ledger:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (debited, texts, left) = (&self.books.debited, self.books.texts, self.left_in_queue);
        let deliveries = self.notices.len() + 2; // w1 twice (redelivered), w2 twice (published)
        let deduplicated = deliveries.saturating_sub(debited.len() + left);
        let (withdrawn, ids) = (self.books.withdrawn, debited.join(", "));
        writeln!(f, "records:      {}", self.store)?;
        writeln!(f, "debited:      {} ({ids})", debited.len())?;
        writeln!(f, "texts sent:   {texts}")?;
        writeln!(
            f,
            "balance:      ${OPENING} - ${withdrawn} = ${}",
            OPENING - withdrawn
        )?;
        writeln!(f, "deduplicated: {deduplicated} of {deliveries} deliveries")?;
        writeln!(f, "left over:    {left} in the queue")
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
    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let report = run(App::new(), redis_url.as_deref()).await?;
    print!("\n{report}");
    Ok(())
}
