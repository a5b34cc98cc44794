//! ordered_events: ordered partitions (the notes' 顺序消费). Bank accounts receive deposits and
//! withdrawals, numbered per account; a withdrawal applied before the deposit that covers it would
//! bounce. `partitions = 4` spreads the accounts over four queues (`account.events.0` … `.3`) by a
//! stable hash of the account id, each queue with a single active consumer: one account's events
//! are applied in order, while accounts on different partitions are applied in parallel.
//!
//! ```text
//! cargo run -p examples --example ordered_events                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example ordered_events # RabbitMQ
//! ```
//!
//! Run two copies against one RabbitMQ and each partition is active in one of them; stop that one
//! and the other takes its partitions over, still in order.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp_core::{App, ListenerError, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// The listener of this example (its id).
pub const LISTENER: &str = "ordered_events.accounts";
/// The queue, as the producer names it; its partitions are `account.events.<p>`.
pub const QUEUE: &str = "account.events";
pub const PARTITIONS: u16 = 4;
pub const ACCOUNTS: u32 = 20;
pub const EVENTS_PER_ACCOUNT: u32 = 25;

/// A change to one account: the `seq`-th for it, from 0.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccountEvent {
    pub account: String,
    pub seq: u32,
    pub change: Change,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Change {
    Deposit(i64),
    Withdraw(i64),
}

/// Even events deposit, odd ones withdraw exactly the deposit before them; the last deposits.
fn event(account: u32, seq: u32) -> AccountEvent {
    let amount = 10 * i64::from(account + 1) + i64::from(seq - seq % 2);
    let change = match seq % 2 {
        0 => Change::Deposit(amount),
        _ => Change::Withdraw(amount),
    };
    AccountEvent {
        account: format!("acct-{account:02}"),
        seq,
        change,
    }
}

/// The balance each account ends with when every event is applied in order (25 events: the
/// last is a deposit).
pub fn expected_balance(account: u32) -> i64 {
    10 * i64::from(account + 1) + i64::from(EVENTS_PER_ACCOUNT - 1)
}

/// The bank's books, shared by the handlers.
#[derive(Debug, Default)]
pub struct Ledger {
    accounts: Mutex<BTreeMap<String, Account>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: i64,
    /// The seq the next event should have.
    pub next: u32,
    /// Events that came before an earlier one of their account.
    pub out_of_order: u32,
    /// Withdrawals refused for lack of funds.
    pub bounced: u32,
}

/// The ledger as handlers and `run` share it.
type Books = Arc<Ledger>;
/// One message per applied event, for `run` to count.
type Applied = UnboundedSender<()>;

#[rabbit_listener(
    id = "ordered_events.accounts",
    queue = "account.events",
    durable = false,
    auto_delete = true,
    partitions = 4,
    prefetch = 20
)]
async fn apply(
    State(ledger): State<Books>,
    State(applied): State<Applied>,
    e: AccountEvent,
) -> Result<(), ListenerError> {
    let running = ledger.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    ledger.most_in_flight.fetch_max(running, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2)).await; // the bank's own work
    {
        let mut accounts = ledger.accounts.lock().expect("not poisoned");
        let account = accounts.entry(e.account.clone()).or_default();
        // A seq below `next` was applied already (a redelivery after a crash): skip it.
        if e.seq >= account.next {
            account.out_of_order += u32::from(e.seq != account.next);
            account.next = e.seq + 1;
            match e.change {
                Change::Deposit(amount) => account.balance += amount,
                Change::Withdraw(amount) if amount <= account.balance => account.balance -= amount,
                Change::Withdraw(_) => account.bounced += 1,
            }
        }
    }
    ledger.in_flight.fetch_sub(1, Ordering::SeqCst);
    applied.send(()).map_err(ListenerError::reject)
}

/// The books after every event was applied.
#[derive(Debug)]
pub struct Report {
    pub accounts: BTreeMap<String, Account>,
    pub most_in_flight: usize,
    pub elapsed: Duration,
}

impl Report {
    /// Accounts with every event applied in order, none bounced, and the expected balance.
    pub fn in_order(&self) -> usize {
        (0..ACCOUNTS)
            .filter(|a| {
                self.accounts
                    .get(&format!("acct-{a:02}"))
                    .is_some_and(|acct| {
                        acct.out_of_order == 0
                            && acct.bounced == 0
                            && acct.balance == expected_balance(*a)
                    })
            })
            .count()
    }
}

/// Sends every account's events (each account's one after the other, accounts concurrently) and
/// waits until all were applied.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let ledger: Books = Arc::default();
    let (tx, mut rx) = unbounded_channel();
    let app = app
        .listeners([LISTENER])
        .state::<Books>(ledger.clone())
        .state::<Applied>(tx);
    let app = app.start().await?;
    let started = tokio::time::Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for account in 0..ACCOUNTS {
        let template = app.template().clone();
        senders.spawn(async move {
            for seq in 0..EVENTS_PER_ACCOUNT {
                let e = event(account, seq);
                template
                    .convert_and_send_partitioned("", QUEUE, PARTITIONS, &e.account, &e)
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent??;
    }
    for n in 0..ACCOUNTS * EVENTS_PER_ACCOUNT {
        if tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .is_err()
        {
            anyhow::bail!("only {n} events were applied");
        }
    }
    let elapsed = started.elapsed();
    app.shutdown().await;
    let accounts = ledger.accounts.lock().expect("not poisoned").clone();
    Ok(Report {
        accounts,
        most_in_flight: ledger.most_in_flight.load(Ordering::SeqCst),
        elapsed,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let balances: Vec<String> = self
            .accounts
            .iter()
            .map(|(name, account)| format!("{name}: {}", account.balance))
            .collect();
        writeln!(f, "final balances: {}", balances.join(", "))?;
        writeln!(
            f,
            "order held for {} of {ACCOUNTS} accounts ({} events each, no withdrawal bounced)",
            self.in_order(),
            EVENTS_PER_ACCOUNT
        )?;
        writeln!(
            f,
            "up to {} events applied at once over {PARTITIONS} partitions, {} ms in all",
            self.most_in_flight,
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
