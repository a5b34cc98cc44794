//! The product service's database: a `products` table and the transactional outbox beside it,
//! in SQLite (a file) or PostgreSQL (`DATABASE_URL`). Every change writes the product row and its
//! `ProductChanged` event in one transaction; the outbox relay publishes the events afterwards,
//! so a broker outage delays them and loses none.
//!
//! The SQL is written once for both databases, with PostgreSQL's placeholders `$1`, `$2`, …; for
//! SQLite they become `?1`, `?2`, … (the same numbered parameters).

use std::path::PathBuf;
use std::sync::Mutex;

use amqp_core::Template;
use amqp_core::outbox::{PostgresOutbox, Relay, SqliteOutbox};

use super::{EXCHANGE, Product, ProductChanged};

/// Where the catalog lives.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite {
        path: PathBuf,
    },
    /// Tables `{prefix}products` and `{prefix}outbox` (the prefix: ASCII letters, digits, `_`).
    Postgres {
        url: String,
        prefix: String,
    },
}

impl Database {
    /// `DATABASE_URL` when set, else SQLite in `default_path`.
    pub fn from_env(default_path: PathBuf) -> Self {
        match std::env::var("DATABASE_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            Some(url) => Database::Postgres {
                url,
                prefix: "data_sync_".into(),
            },
            None => Database::Sqlite { path: default_path },
        }
    }

    fn tables(&self) -> anyhow::Result<(String, String)> {
        let prefix = match self {
            Database::Sqlite { .. } => "",
            Database::Postgres { prefix, .. } => prefix.as_str(),
        };
        anyhow::ensure!(
            prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a table prefix is ASCII letters, digits and `_`, not {prefix:?}"
        );
        Ok((format!("{prefix}products"), format!("{prefix}outbox")))
    }

    /// The relay that publishes this database's outbox through `template`.
    pub fn relay(&self, template: Template) -> anyhow::Result<Relay> {
        let (_, outbox) = self.tables()?;
        Ok(match self {
            Database::Sqlite { path } => {
                Relay::new(SqliteOutbox::new(path).table(&outbox), template)
            }
            Database::Postgres { url, .. } => {
                Relay::new(PostgresOutbox::new(url).table(&outbox), template)
            }
        })
    }
}

/// The products table, and the outbox its changes go through.
#[derive(Debug)]
pub enum Catalog {
    Sqlite {
        conn: Mutex<rusqlite::Connection>,
        outbox: SqliteOutbox,
        tables: (String, String),
    },
    Postgres {
        client: tokio::sync::Mutex<tokio_postgres::Client>,
        outbox: Box<PostgresOutbox>,
        tables: (String, String),
    },
}

/// A change: the SQL (returning id, name, price_cents and version), and how to turn the row it
/// returns into the event. A delete's event carries the next version, so it is newer than every
/// update before it.
struct Change<'a> {
    sql: String,
    key: &'a str,
    deleted: bool,
}

impl Catalog {
    /// Opens the database and creates the tables if need be.
    pub async fn open(db: &Database) -> anyhow::Result<Self> {
        let (table, outbox_table) = db.tables()?;
        match db {
            Database::Sqlite { path } => {
                let conn = rusqlite::Connection::open(path)?;
                conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")?;
                conn.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT,
                     name TEXT NOT NULL, price_cents BIGINT NOT NULL, version BIGINT NOT NULL)"
                ))?;
                let outbox = SqliteOutbox::new(path).table(&outbox_table);
                outbox.create_table(&conn)?;
                Ok(Catalog::Sqlite {
                    conn: Mutex::new(conn),
                    outbox,
                    tables: (table, outbox_table),
                })
            }
            Database::Postgres { url, .. } => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| anyhow::anyhow!("PostgreSQL at {url}: {e}"))?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL PRIMARY KEY,
                         name TEXT NOT NULL, price_cents BIGINT NOT NULL, version BIGINT NOT NULL)"
                    ))
                    .await?;
                let outbox = Box::new(PostgresOutbox::new(url).table(&outbox_table));
                outbox.create_table(&client).await?;
                let tables = (table, outbox_table);
                Ok(Catalog::Postgres {
                    client: tokio::sync::Mutex::new(client),
                    outbox,
                    tables,
                })
            }
        }
    }

    /// Empties the catalog and its outbox (the demo starts afresh).
    pub async fn clear(&self) -> anyhow::Result<()> {
        match self {
            Catalog::Sqlite {
                conn,
                tables: (products, outbox),
                ..
            } => {
                let sql = format!("DELETE FROM {products}; DELETE FROM {outbox};");
                conn.lock().expect("not poisoned").execute_batch(&sql)?;
            }
            Catalog::Postgres {
                client,
                tables: (products, outbox),
                ..
            } => {
                let sql = format!("DELETE FROM {products}; DELETE FROM {outbox};");
                client.lock().await.batch_execute(&sql).await?;
            }
        }
        Ok(())
    }

    fn table(&self) -> &str {
        match self {
            Catalog::Sqlite { tables, .. } | Catalog::Postgres { tables, .. } => &tables.0,
        }
    }

    pub async fn create(&self, name: &str, price_cents: i64) -> anyhow::Result<Product> {
        let sql = format!(
            "INSERT INTO {} (name, price_cents, version) VALUES ($1, $2, 1) RETURNING id, name, price_cents, version",
            self.table()
        );
        let change = Change {
            sql,
            key: "product.created",
            deleted: false,
        };
        let event = self.apply(change, None, Some((name, price_cents))).await?;
        event
            .and_then(ProductChanged::into_product)
            .ok_or_else(|| anyhow::anyhow!("insert returned no row"))
    }

    /// Renames and reprices a product; `None` if there is no such product.
    pub async fn update(
        &self,
        id: i64,
        name: &str,
        price_cents: i64,
    ) -> anyhow::Result<Option<Product>> {
        let sql = format!(
            "UPDATE {} SET name = $2, price_cents = $3, version = version + 1 WHERE id = $1 RETURNING id, name, price_cents, version",
            self.table()
        );
        let change = Change {
            sql,
            key: "product.updated",
            deleted: false,
        };
        Ok(self
            .apply(change, Some(id), Some((name, price_cents)))
            .await?
            .and_then(ProductChanged::into_product))
    }

    /// Deletes a product; returns whether there was one.
    pub async fn delete(&self, id: i64) -> anyhow::Result<bool> {
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 RETURNING id, name, price_cents, version",
            self.table()
        );
        let change = Change {
            sql,
            key: "product.deleted",
            deleted: true,
        };
        Ok(self.apply(change, Some(id), None).await?.is_some())
    }

    /// Runs one change and enqueues its event, in one transaction.
    async fn apply(
        &self,
        change: Change<'_>,
        id: Option<i64>,
        fields: Option<(&str, i64)>,
    ) -> anyhow::Result<Option<ProductChanged>> {
        let event = |p: Product| match change.deleted {
            true => ProductChanged::Deleted {
                id: p.id,
                version: p.version + 1,
            },
            false => ProductChanged::Saved(p),
        };
        match self {
            Catalog::Sqlite { conn, outbox, .. } => {
                let mut conn = conn.lock().expect("not poisoned");
                let tx = conn.transaction()?;
                let mut params: Vec<Box<dyn rusqlite::ToSql>> =
                    id.map(|i| Box::new(i) as _).into_iter().collect();
                if let Some((name, price)) = fields {
                    params.extend([Box::new(name.to_owned()) as _, Box::new(price) as _]);
                }
                let row = tx.query_row(
                    &change.sql.replace('$', "?"),
                    rusqlite::params_from_iter(params),
                    |r| {
                        Ok(Product {
                            id: r.get(0)?,
                            name: r.get(1)?,
                            price_cents: r.get(2)?,
                            version: r.get(3)?,
                        })
                    },
                );
                let product = match row {
                    Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
                    other => other?,
                };
                let event = event(product);
                outbox.enqueue(&tx, EXCHANGE, change.key, &event)?;
                tx.commit()?;
                Ok(Some(event))
            }
            Catalog::Postgres { client, outbox, .. } => {
                let mut client = client.lock().await;
                let tx = client.transaction().await?;
                let name = fields.map(|(n, _)| n.to_owned());
                let price = fields.map(|(_, p)| p);
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
                if let Some(id) = &id {
                    params.push(id);
                }
                if let (Some(name), Some(price)) = (&name, &price) {
                    params.push(name);
                    params.push(price);
                }
                let Some(r) = tx.query_opt(&change.sql, &params).await? else {
                    return Ok(None);
                };
                let event = event(Product {
                    id: r.get(0),
                    name: r.get(1),
                    price_cents: r.get(2),
                    version: r.get(3),
                });
                outbox.enqueue(&tx, EXCHANGE, change.key, &event).await?;
                tx.commit().await?;
                Ok(Some(event))
            }
        }
    }

    /// Every product, by id.
    pub async fn products(&self) -> anyhow::Result<Vec<Product>> {
        let sql = format!(
            "SELECT id, name, price_cents, version FROM {} ORDER BY id",
            self.table()
        );
        match self {
            Catalog::Sqlite { conn, .. } => {
                let conn = conn.lock().expect("not poisoned");
                let mut query = conn.prepare(&sql)?;
                let rows = query.query_map([], |r| {
                    Ok(Product {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        price_cents: r.get(2)?,
                        version: r.get(3)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Catalog::Postgres { client, .. } => {
                let rows = client.lock().await.query(&sql, &[]).await?;
                let product = |r: &tokio_postgres::Row| Product {
                    id: r.get(0),
                    name: r.get(1),
                    price_cents: r.get(2),
                    version: r.get(3),
                };
                Ok(rows.iter().map(product).collect())
            }
        }
    }
}
