//! Idempotent consumers: a message whose `message_id` was handled already is acknowledged without
//! running the handler again.
//!
//! Brokers deliver at least once: a publisher that did not get its confirm sends again, and a
//! consumer that dies before its ack gets the message redelivered. For a handler whose side effect
//! must happen once (a bank applying a withdrawal), the listener keeps a record per message id in
//! an [`IdempotencyStore`], in two steps so that a crash never turns into a skipped message:
//!
//! ```text
//! delivery ─ begin(id, lease) ─┬─ Acquired → run handler ─┬─ Ok  → complete(id) "done" → ack
//!                              │                          └─ Err → release(id) → reject/requeue
//!                              ├─ Done     → ack without running (a duplicate)
//!                              └─ Busy     → another consumer holds a live lease: requeue later
//! ```
//!
//! - A consumer that dies after its side effect but before "done" leaves a *processing* record
//!   with a lease; once the lease expires the redelivery runs again (at least once, never zero).
//! - A consumer that dies after "done" but before its ack gets its redelivery acked unread.
//! - Two consumers never run the same id at once while the lease lives; choose a lease longer
//!   than the handler takes.
//!
//! Records are scoped by queue, so one message fanned out to two queues is handled once on each.
//! A message without a `message_id` cannot be deduplicated: it is handled as usual, with a
//! warning. ([`crate::Template`] gives every message a fresh id.)
//!
//! Stores: [`MemoryStore`] (one process; bounded, with expiry) and, with the `idempotent-redis`
//! feature, [`RedisStore`] (shared by every process, `REDIS_URL`).
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
//! # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use amqp_core::idempotent::{Idempotency, MemoryStore};
//! use amqp_core::{Connection, Listener, ListenerError, Message, Queue, Template};
//!
//! let conn = Connection::connect(&broker.amqp_url()).await?;
//! conn.declare(Queue::durable("withdrawals")).await?;
//! let applied = Arc::new(AtomicUsize::new(0));
//! let counter = applied.clone();
//! let listener = Listener::on("withdrawals")
//!     .idempotent(Idempotency::new(MemoryStore::new()))
//!     .handler(move |_amount: u64| {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         async { Ok::<_, ListenerError>(()) }
//!     })
//!     .start(&conn)
//!     .await?;
//! let template = Template::new(conn.clone());
//! // The same message (same message_id) published twice: applied once.
//! let message = Message::new(b"100".to_vec()).with_properties(
//!     amqp_core::types::BasicProperties::default().with_message_id("w-1".into()),
//! );
//! template.send("", "withdrawals", message.clone()).await?;
//! template.send("", "withdrawals", message).await?;
//! template.convert_and_send("", "withdrawals", &7u64).await?;
//! while applied.load(Ordering::SeqCst) < 2 {
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! }
//! # tokio::time::sleep(std::time::Duration::from_millis(100)).await;
//! assert_eq!(applied.load(Ordering::SeqCst), 2);
//! listener.shutdown().await;
//! # Ok(()) }
//! ```

mod memory;
#[cfg(feature = "idempotent-redis")]
mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use self::memory::MemoryStore;
#[cfg(feature = "idempotent-redis")]
pub use self::redis::RedisStore;

/// What [`IdempotencyStore::begin`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// No record, or an expired lease: the caller holds a new lease, proven by this token, and
    /// runs the handler.
    Acquired(String),
    /// Handled before: acknowledge without running.
    Done,
    /// Another consumer holds a live lease; it ends in `remaining` at the latest.
    Busy {
        /// How long the other consumer's lease has left.
        remaining: Duration,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where an idempotent listener records which message ids are being handled and which are done.
///
/// Implementations must make [`begin`](Self::begin) atomic (like Redis `SET NX`): of two callers
/// racing on one key, one acquires and the other sees `Busy` or `Done`.
pub trait IdempotencyStore: Send + Sync + fmt::Debug + 'static {
    /// Claims `key` for `lease`, unless it is done or leased by someone else.
    fn begin<'a>(&'a self, key: &'a str, lease: Duration)
    -> BoxFuture<'a, Result<Claim, BoxError>>;

    /// Marks `key` done (remembered for `keep`), after the handler succeeded.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Drops the lease on `key` if `token` still holds it, after the handler failed, so that a
    /// redelivery may run at once.
    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// An idempotent listener's settings: the store and how long records last.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use amqp_core::idempotent::{Idempotency, MemoryStore};
///
/// let idempotency = Idempotency::new(MemoryStore::with_capacity(100_000))
///     .lease(Duration::from_secs(60))
///     .keep(Duration::from_secs(7 * 24 * 3600));
/// # let _ = idempotency;
/// ```
#[derive(Clone, Debug)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    lease: Duration,
    keep: Duration,
}

impl Idempotency {
    /// Deduplicates through `store`, with a 30 s lease and done records kept for a day.
    pub fn new(store: impl IdempotencyStore) -> Self {
        Self::shared(Arc::new(store))
    }

    /// Like [`new`](Self::new), with a store shared with other listeners.
    pub fn shared(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            store,
            lease: Duration::from_secs(30),
            keep: Duration::from_secs(24 * 3600),
        }
    }

    /// How long a consumer may take before its claim lapses and a redelivery runs again (default
    /// 30 s). Longer than the handler ever takes, shorter than you are willing to wait after a
    /// crash.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// How long a done record is remembered (default one day): duplicates arriving later than
    /// that run again.
    pub fn keep(mut self, keep: Duration) -> Self {
        self.keep = keep.max(Duration::from_millis(1));
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.store
    }

    pub(crate) fn lease_time(&self) -> Duration {
        self.lease
    }

    pub(crate) fn keep_time(&self) -> Duration {
        self.keep
    }
}

/// The store's key for a message id consumed from `queue` (to inspect or clear a record by hand).
///
/// ```
/// assert_eq!(amqp_core::idempotent::key("orders", "m-1"), "amqp-idempotent:orders:m-1");
/// ```
pub fn key(queue: &str, message_id: &str) -> String {
    format!("amqp-idempotent:{queue}:{message_id}")
}

/// A fresh lease token.
pub(crate) fn token() -> String {
    uuid::Uuid::new_v4().to_string()
}
