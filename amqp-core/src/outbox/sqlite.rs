//! [`SqliteOutbox`]: the outbox table in SQLite, through `rusqlite`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::Serialize;

use super::{DEFAULT_TABLE, OutboxRow, OutboxSource, checked_table, now_millis};
use crate::converter::{JsonConverter, MessageConverter};
use crate::error::{Error, Result};

fn store_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Store {
        store: "sqlite outbox",
        source: Box::new(e),
    }
}

/// An outbox table in an SQLite database file (feature `outbox-sqlite`).
///
/// Your code writes to it with [`enqueue`](Self::enqueue) inside its own `rusqlite`
/// transaction; a [`super::Relay`] reads it through a connection of its own to the same file
/// (so the database must be a file, not `:memory:`). See [`super::Relay`] for an example.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    path: PathBuf,
    table: String,
    /// The relay's connection, opened on first use.
    relay_conn: Arc<Mutex<Option<rusqlite::Connection>>>,
}

impl SqliteOutbox {
    /// The outbox table `amqp_outbox` in the database at `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            table: DEFAULT_TABLE.into(),
            relay_conn: Arc::default(),
        }
    }

    /// Uses another table name.
    ///
    /// # Panics
    ///
    /// When `name` has characters other than ASCII letters, digits and `_`.
    pub fn table(mut self, name: &str) -> Self {
        self.table = checked_table(name);
        self
    }

    /// Creates the table and its index if they do not exist (the schema is in
    /// [`crate::outbox`]).
    pub fn create_table(&self, conn: &rusqlite::Connection) -> Result<()> {
        let t = &self.table;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                message_id TEXT NOT NULL UNIQUE,
                exchange TEXT NOT NULL,
                routing_key TEXT NOT NULL,
                content_type TEXT,
                type_id TEXT,
                body BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                sent_at INTEGER
            );
            CREATE INDEX IF NOT EXISTS {t}_unsent ON {t} (id) WHERE sent_at IS NULL;"
        ))
        .map_err(store_error)
    }

    /// Adds a message to the outbox, as part of the transaction `tx` is in (a
    /// `rusqlite::Transaction` derefs to the connection this takes). The payload is JSON.
    /// Returns the message id it will be published with.
    pub fn enqueue<T: Serialize + ?Sized>(
        &self,
        tx: &rusqlite::Connection,
        exchange: &str,
        routing_key: &str,
        payload: &T,
    ) -> Result<String> {
        let body = JsonConverter.serialize(payload)?;
        let message_id = uuid::Uuid::new_v4().to_string();
        tx.execute(
            &format!(
                "INSERT INTO {} (message_id, exchange, routing_key, content_type, type_id, body, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                self.table
            ),
            rusqlite::params![
                message_id,
                exchange,
                routing_key,
                JsonConverter.content_type(),
                std::any::type_name::<T>(),
                body,
                now_millis(),
            ],
        )
        .map_err(store_error)?;
        Ok(message_id)
    }

    /// Runs `f` on the relay's connection, on a blocking thread.
    async fn with_conn<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection, &str) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let slot = self.relay_conn.clone();
        let path = self.path.clone();
        let table = self.table.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = slot.lock();
            if slot.is_none() {
                let conn = rusqlite::Connection::open(&path)?;
                conn.busy_timeout(Duration::from_secs(5))?;
                *slot = Some(conn);
            }
            let conn = slot.as_ref().expect("opened above");
            let result = f(conn, &table);
            if result.is_err() {
                // Open afresh next time.
                *slot = None;
            }
            result
        })
        .await
        .map_err(store_error)?
        .map_err(store_error)
    }
}

impl OutboxSource for SqliteOutbox {
    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxRow>>> {
        Box::pin(self.with_conn(move |conn, table| {
            let mut statement = conn.prepare(&format!(
                "SELECT id, message_id, exchange, routing_key, content_type, type_id, body, created_at
                 FROM {table} WHERE sent_at IS NULL ORDER BY id LIMIT ?1"
            ))?;
            let rows = statement.query_map([limit as i64], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    message_id: r.get(1)?,
                    exchange: r.get(2)?,
                    routing_key: r.get(3)?,
                    content_type: r.get(4)?,
                    type_id: r.get(5)?,
                    body: r.get(6)?,
                    created_at_secs: (r.get::<_, i64>(7)?.max(0) / 1000) as u64,
                })
            })?;
            rows.collect()
        }))
    }

    fn mark_sent(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.with_conn(move |conn, table| {
            conn.execute(
                &format!("UPDATE {table} SET sent_at = ?1 WHERE id = ?2"),
                rusqlite::params![now_millis(), id],
            )?;
            Ok(())
        }))
    }
}
