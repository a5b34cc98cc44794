//! [`PostgresOutbox`]: the outbox table in PostgreSQL, through `tokio-postgres`.

use futures::future::BoxFuture;
use serde::Serialize;
use tokio_postgres::{GenericClient, NoTls};

use super::{DEFAULT_TABLE, OutboxRow, OutboxSource, checked_table};
use crate::converter::{JsonConverter, MessageConverter};
use crate::error::{Error, Result};

fn store_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Store {
        store: "postgres outbox",
        source: Box::new(e),
    }
}

/// An outbox table in PostgreSQL (feature `outbox-postgres`).
///
/// Your code writes to it with [`enqueue`](Self::enqueue) inside its own `tokio-postgres`
/// transaction; a [`super::Relay`] reads it through a connection of its own, opened from the
/// connection string (`DATABASE_URL` with [`from_env`](Self::from_env)) and re-opened after a
/// failure. The schema is in [`crate::outbox`].
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use amqp_core::outbox::PostgresOutbox;
///
/// let url = "host=127.0.0.1 user=postgres dbname=test";
/// let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
/// tokio::spawn(connection);
/// let outbox = PostgresOutbox::new(url);
/// outbox.create_table(&client).await?;
/// let tx = client.transaction().await?;
/// tx.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 1", &[]).await?;
/// outbox.enqueue(&tx, "bank", "withdrawal", &serde_json::json!({ "account": 1, "amount": 100 })).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresOutbox {
    url: String,
    table: String,
    /// The relay's connection, opened on first use.
    relay_client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl PostgresOutbox {
    /// The outbox table `amqp_outbox` in the database at `url` (`postgres://user@host/db` or
    /// `host=... user=... dbname=...`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table: DEFAULT_TABLE.into(),
            relay_client: tokio::sync::Mutex::new(None),
        }
    }

    /// The outbox in the database at `DATABASE_URL`.
    pub fn from_env() -> Result<Self> {
        std::env::var("DATABASE_URL")
            .map(Self::new)
            .map_err(|_| Error::Configuration("DATABASE_URL is not set".into()))
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

    /// Creates the table and its index if they do not exist.
    pub async fn create_table(&self, client: &impl GenericClient) -> Result<()> {
        let t = &self.table;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    id BIGSERIAL PRIMARY KEY,
                    message_id TEXT NOT NULL UNIQUE,
                    exchange TEXT NOT NULL,
                    routing_key TEXT NOT NULL,
                    content_type TEXT,
                    type_id TEXT,
                    body BYTEA NOT NULL,
                    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    sent_at TIMESTAMPTZ
                );
                CREATE INDEX IF NOT EXISTS {t}_unsent ON {t} (id) WHERE sent_at IS NULL;"
            ))
            .await
            .map_err(store_error)
    }

    /// Adds a message to the outbox as part of `tx`'s transaction (a `tokio_postgres::Transaction`,
    /// or a `Client` for a statement of its own). The payload is JSON. Returns the message id it
    /// will be published with.
    pub async fn enqueue<T: Serialize + ?Sized>(
        &self,
        tx: &impl GenericClient,
        exchange: &str,
        routing_key: &str,
        payload: &T,
    ) -> Result<String> {
        let body = JsonConverter.serialize(payload)?;
        let message_id = uuid::Uuid::new_v4().to_string();
        tx.execute(
            &format!(
                "INSERT INTO {} (message_id, exchange, routing_key, content_type, type_id, body)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                self.table
            ),
            &[
                &message_id,
                &exchange,
                &routing_key,
                &JsonConverter.content_type(),
                &std::any::type_name::<T>(),
                &body,
            ],
        )
        .await
        .map_err(store_error)?;
        Ok(message_id)
    }

    /// Runs `f` with the relay's client, connecting first if need be; drops the client after an
    /// error so that the next call connects afresh.
    async fn with_client<R>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<R, tokio_postgres::Error>,
    ) -> Result<R> {
        let mut slot = self.relay_client.lock().await;
        if slot.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(store_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("outbox relay's database connection ended: {e}");
                }
            });
            *slot = Some(client);
        }
        let client = slot.as_ref().expect("connected above");
        let result = f(client).await;
        if result.is_err() {
            *slot = None;
        }
        result.map_err(store_error)
    }
}

impl OutboxSource for PostgresOutbox {
    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxRow>>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT id, message_id, exchange, routing_key, content_type, type_id, body,
                        EXTRACT(EPOCH FROM created_at)::BIGINT
                 FROM {} WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                self.table
            );
            let rows = self
                .with_client(async |client| client.query(&sql, &[&(limit as i64)]).await)
                .await?;
            Ok(rows
                .iter()
                .map(|r| OutboxRow {
                    id: r.get(0),
                    message_id: r.get(1),
                    exchange: r.get(2),
                    routing_key: r.get(3),
                    content_type: r.get(4),
                    type_id: r.get(5),
                    body: r.get(6),
                    created_at_secs: r.get::<_, i64>(7).max(0) as u64,
                })
                .collect())
        })
    }

    fn mark_sent(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let sql = format!("UPDATE {} SET sent_at = now() WHERE id = $1", self.table);
            self.with_client(async |client| client.execute(&sql, &[&id]).await)
                .await?;
            Ok(())
        })
    }
}
