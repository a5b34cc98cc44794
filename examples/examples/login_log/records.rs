//! Where login records are kept: a table in SQLite (the default, a file) or in PostgreSQL
//! (`DATABASE_URL`). Each login is stored once, keyed by its id, so a redelivered event does not
//! make a second record.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The records table.
#[derive(Debug)]
pub enum LoginRecords {
    Sqlite {
        conn: Mutex<rusqlite::Connection>,
        table: String,
    },
    Postgres {
        client: tokio_postgres::Client,
        table: String,
    },
}

/// Where the records go (the table name must be ASCII letters, digits and `_`).
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite { path: PathBuf, table: String },
    Postgres { url: String, table: String },
}

impl Database {
    /// `DATABASE_URL` when set, else SQLite in `default_path`; the table `login_records`.
    pub fn from_env(default_path: PathBuf) -> Self {
        let table = "login_records".to_owned();
        match std::env::var("DATABASE_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            Some(url) => Database::Postgres { url, table },
            None => Database::Sqlite {
                path: default_path,
                table,
            },
        }
    }
}

impl LoginRecords {
    /// Opens the database and creates the table if need be.
    pub async fn open(db: &Database) -> anyhow::Result<Self> {
        let checked = |t: &str| {
            anyhow::ensure!(
                !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "a table name is ASCII letters, digits and `_`, not {t:?}"
            );
            Ok(t.to_owned())
        };
        let create = "(login_id TEXT PRIMARY KEY, username TEXT NOT NULL, ip TEXT NOT NULL, at_ms BIGINT NOT NULL)";
        match db {
            Database::Sqlite { path, table } => {
                let table = checked(table)?;
                let conn = rusqlite::Connection::open(path)?;
                conn.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {table} {create}"))?;
                Ok(LoginRecords::Sqlite {
                    conn: Mutex::new(conn),
                    table,
                })
            }
            Database::Postgres { url, table } => {
                let table = checked(table)?;
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| anyhow::anyhow!("PostgreSQL at DATABASE_URL: {e}"))?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} {create}"))
                    .await?;
                Ok(LoginRecords::Postgres { client, table })
            }
        }
    }

    /// Stores one login (again: a no-op).
    pub async fn insert(
        &self,
        login_id: &str,
        user: &str,
        ip: &str,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        match self {
            LoginRecords::Sqlite { conn, table } => {
                let sql = format!("INSERT OR IGNORE INTO {table} VALUES (?1, ?2, ?3, ?4)");
                let conn = conn.lock().expect("not poisoned");
                conn.execute(&sql, rusqlite::params![login_id, user, ip, at_ms])?;
            }
            LoginRecords::Postgres { client, table } => {
                let sql =
                    format!("INSERT INTO {table} VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING");
                client
                    .execute(&sql, &[&login_id, &user, &ip, &at_ms])
                    .await?;
            }
        }
        Ok(())
    }

    /// The ids of every stored login.
    pub async fn login_ids(&self) -> anyhow::Result<Vec<String>> {
        match self {
            LoginRecords::Sqlite { conn, table } => {
                let conn = conn.lock().expect("not poisoned");
                let mut query =
                    conn.prepare(&format!("SELECT login_id FROM {table} ORDER BY at_ms"))?;
                let ids = query
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(ids)
            }
            LoginRecords::Postgres { client, table } => {
                let rows = client
                    .query(&format!("SELECT login_id FROM {table} ORDER BY at_ms"), &[])
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            }
        }
    }

    /// How many of `ids` have a record, waiting up to `wait` for all of them.
    pub async fn count(&self, ids: &[String], wait: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + wait;
        loop {
            let stored = self.login_ids().await?;
            let n = ids.iter().filter(|id| stored.contains(id)).count();
            if n == ids.len() || Instant::now() >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
