//! The transactional outbox: a database change and the message announcing it are written in one
//! transaction, and a [`Relay`] publishes the message afterwards.
//!
//! Publishing from inside a business transaction has two bad endings: the broker is down, and
//! either the change rolls back (the notes' `try/catch` around the send avoids that by losing the
//! message instead), or the message goes out but the transaction then fails. With an outbox:
//!
//! 1. In your transaction, write your data and call `enqueue` (a row in the outbox table). Both
//!    commit or neither does. The broker is not involved: an outage cannot fail the write.
//! 2. A [`Relay`] task reads unsent rows in order, publishes each with a publisher confirm
//!    ([`crate::Template`]), and marks it sent. While the broker is unreachable it waits and
//!    tries again: the message is delayed, never lost.
//! 3. A relay that dies after the confirm but before marking the row sends it again on restart:
//!    a duplicate with the same `message_id`, which [`crate::idempotent`] consumers absorb.
//!
//! Run one relay per outbox table (two would publish rows twice, which is safe for idempotent
//! consumers but wasteful).
//!
//! Stores: `SqliteOutbox` (feature `outbox-sqlite`, through `rusqlite`) and `PostgresOutbox`
//! (feature `outbox-postgres`, through `tokio-postgres`, `DATABASE_URL`). Both use one table,
//! `amqp_outbox` by default:
//!
//! | column | SQLite | PostgreSQL | meaning |
//! |---|---|---|---|
//! | `id` | `INTEGER PRIMARY KEY AUTOINCREMENT` | `BIGSERIAL PRIMARY KEY` | publishing order |
//! | `message_id` | `TEXT NOT NULL UNIQUE` | `TEXT NOT NULL UNIQUE` | the message's `message_id` (a UUID) |
//! | `exchange` | `TEXT NOT NULL` | `TEXT NOT NULL` | where to publish (`""`: the default exchange) |
//! | `routing_key` | `TEXT NOT NULL` | `TEXT NOT NULL` | the routing key |
//! | `content_type` | `TEXT` | `TEXT` | e.g. `application/json` |
//! | `type_id` | `TEXT` | `TEXT` | the payload's Rust type, sent as the `__TypeId__` header |
//! | `body` | `BLOB NOT NULL` | `BYTEA NOT NULL` | the message body |
//! | `created_at` | `INTEGER NOT NULL` (Unix ms) | `TIMESTAMPTZ NOT NULL DEFAULT now()` | when enqueued (the message's `timestamp`) |
//! | `sent_at` | `INTEGER` (Unix ms) | `TIMESTAMPTZ` | `NULL` until the broker confirmed it |
//!
//! with an index on `id` for the rows whose `sent_at` is `NULL`. Delete sent rows when you like
//! (`DELETE FROM amqp_outbox WHERE sent_at < ...`).

#[cfg(feature = "outbox-postgres")]
mod postgres;
#[cfg(feature = "outbox-sqlite")]
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::message::{Message, TYPE_ID_HEADER};
use crate::template::Template;

#[cfg(feature = "outbox-postgres")]
pub use self::postgres::PostgresOutbox;
#[cfg(feature = "outbox-sqlite")]
pub use self::sqlite::SqliteOutbox;

/// The default outbox table.
pub const DEFAULT_TABLE: &str = "amqp_outbox";

/// One outbox row waiting to be published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row's id: rows are published in this order.
    pub id: i64,
    /// The message's `message_id`.
    pub message_id: String,
    /// The exchange to publish to.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body's content type.
    pub content_type: Option<String>,
    /// The payload's type name (the `__TypeId__` header).
    pub type_id: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// When it was enqueued, in seconds since the Unix epoch.
    pub created_at_secs: u64,
}

impl OutboxRow {
    /// The message to publish: persistent, with the row's message id, content type, type header
    /// and timestamp.
    pub fn message(&self) -> Message {
        let mut properties = BasicProperties::default()
            .with_message_id(self.message_id.as_str().into())
            .with_timestamp(self.created_at_secs)
            .with_delivery_mode(2);
        if let Some(ct) = &self.content_type {
            properties = properties.with_content_type(ct.as_str().into());
        }
        if let Some(type_id) = &self.type_id {
            let mut headers = FieldTable::default();
            headers.insert(
                TYPE_ID_HEADER.into(),
                AMQPValue::LongString(type_id.as_str().into()),
            );
            properties = properties.with_headers(headers);
        }
        Message {
            body: self.body.clone(),
            properties,
        }
    }
}

/// An outbox table as the [`Relay`] sees it.
pub trait OutboxSource: Send + Sync + std::fmt::Debug + 'static {
    /// Up to `limit` unsent rows, oldest first.
    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxRow>>>;

    /// Marks a row sent (after the broker confirmed it).
    fn mark_sent(&self, id: i64) -> BoxFuture<'_, Result<()>>;
}

/// Checks a table name for interpolation into SQL.
///
/// # Panics
///
/// When `name` is empty or has characters other than ASCII letters, digits and `_`.
#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
pub(crate) fn checked_table(name: &str) -> String {
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "an outbox table name is ASCII letters, digits and `_`, not {name:?}"
    );
    name.to_owned()
}

/// Publishes outbox rows: oldest first, each with a publisher confirm, then marks it sent.
///
/// # Examples
///
/// With SQLite (feature `outbox-sqlite`):
///
/// ```
/// # #[cfg(feature = "outbox-sqlite")]
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
/// # let path = std::env::temp_dir().join(format!("outbox-doc-{}.db", std::process::id()));
/// use std::time::Duration;
/// use amqp_core::outbox::{Relay, SqliteOutbox};
/// use amqp_core::{Connection, Queue, Template};
///
/// let conn = Connection::connect(&broker.amqp_url()).await?;
/// conn.declare(Queue::durable("orders.created")).await?;
///
/// let mut db = rusqlite::Connection::open(&path)?;
/// let outbox = SqliteOutbox::new(&path);
/// outbox.create_table(&db)?;
/// db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)", [])?;
///
/// // The order and its event commit together, broker or no broker.
/// let tx = db.transaction()?;
/// tx.execute("INSERT INTO orders (id, item) VALUES (1, 'book')", [])?;
/// outbox.enqueue(&tx, "", "orders.created", &serde_json::json!({ "order": 1 }))?;
/// tx.commit()?;
///
/// let template = Template::new(conn.clone());
/// let relay = Relay::new(outbox, template.clone()).spawn();
/// let event: Option<serde_json::Value> =
///     template.receive_and_convert("orders.created", Duration::from_secs(5)).await?;
/// assert_eq!(event, Some(serde_json::json!({ "order": 1 })));
/// relay.shutdown().await;
/// # drop(db); let _ = std::fs::remove_file(&path);
/// # Ok(()) }
/// # #[cfg(not(feature = "outbox-sqlite"))] fn main() {}
/// ```
#[derive(Debug)]
pub struct Relay {
    source: Arc<dyn OutboxSource>,
    template: Template,
    poll_interval: Duration,
    batch_size: usize,
}

impl Relay {
    /// A relay from `source` through `template`, polling every 200 ms, 100 rows at a time.
    pub fn new(source: impl OutboxSource, template: Template) -> Self {
        Self {
            source: Arc::new(source),
            template,
            poll_interval: Duration::from_millis(200),
            batch_size: 100,
        }
    }

    /// How often to look for new rows when the outbox is empty, and to retry after a failure.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// How many rows to read at once.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// Publishes unsent rows once (a batch), oldest first. Stops at the first row that fails to
    /// publish or to be marked, leaving it and the rest for the next call. Returns how many were
    /// sent.
    pub async fn relay_once(&self) -> Result<usize> {
        let rows = self.source.unsent(self.batch_size).await?;
        let mut sent = 0;
        for row in rows {
            self.template
                .send(&row.exchange, &row.routing_key, row.message())
                .await?;
            self.source.mark_sent(row.id).await?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Runs in a task until [`RelayHandle::shutdown`]: relays, and waits a poll interval whenever
    /// the outbox is empty or publishing failed (a broker outage, say).
    pub fn spawn(self) -> RelayHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let pause = match self.relay_once().await {
                    Ok(n) if n == self.batch_size => Duration::ZERO,
                    Ok(_) => self.poll_interval,
                    Err(e) => {
                        tracing::warn!("outbox relay: {e}; retrying in {:?}", self.poll_interval);
                        self.poll_interval
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
        RelayHandle { stop, task }
    }
}

/// A running [`Relay`].
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay after the row it is publishing, if any.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Milliseconds since the Unix epoch.
#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
