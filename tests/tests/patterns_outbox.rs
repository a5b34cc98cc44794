//! The transactional outbox, with SQLite and with PostgreSQL: business rows and their messages
//! are written in one transaction while the broker is unreachable (through the fault-injecting
//! proxy); the relay publishes them, in order, once it is back; a rolled-back transaction sends
//! nothing; a relay that dies between the confirm and marking the row sends a duplicate (same
//! message id), never loses one. On the bundled broker and on RabbitMQ.
//!
//! PostgreSQL is at `DATABASE_URL` (default `host=127.0.0.1 user=postgres dbname=test`, which this
//! machine and CI run); one that does not answer fails the PostgreSQL tests.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use amqp_core::outbox::{OutboxRow, OutboxSource, PostgresOutbox, Relay, SqliteOutbox};
use amqp_core::{Connection, ConnectionFactory, Queue, Template};
use common::within;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tests::proxy::Proxy;
use tests::{TestBroker, conformance, unique};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
}

/// The business side: insert an order and enqueue its event in one transaction, or roll back.
trait Shop: Send + Sync {
    fn source(&self) -> Box<dyn FnOnce() -> Box<dyn OutboxSourceBox> + Send>;
    async fn place(&self, order: i64, queue: &str, commit: bool);
    async fn orders(&self) -> Vec<i64>;
    async fn unsent(&self) -> usize;
}

/// A boxed outbox source (so that one test body serves both databases).
trait OutboxSourceBox: Send {
    fn relay(self: Box<Self>, template: Template) -> Relay;
}

impl<S: OutboxSource> OutboxSourceBox for S {
    fn relay(self: Box<Self>, template: Template) -> Relay {
        Relay::new(*self, template).poll_interval(Duration::from_millis(50))
    }
}

struct Sqlite {
    path: std::path::PathBuf,
    db: parking_lot::Mutex<rusqlite::Connection>,
    outbox: SqliteOutbox,
}

impl Sqlite {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", unique("patterns-outbox")));
        let db = rusqlite::Connection::open(&path).expect("open sqlite");
        let outbox = SqliteOutbox::new(&path);
        outbox.create_table(&db).expect("outbox table");
        db.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            .expect("orders table");
        Self {
            path,
            db: parking_lot::Mutex::new(db),
            outbox,
        }
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Shop for Sqlite {
    fn source(&self) -> Box<dyn FnOnce() -> Box<dyn OutboxSourceBox> + Send> {
        let outbox = self.outbox.clone();
        Box::new(move || Box::new(outbox) as Box<dyn OutboxSourceBox>)
    }

    async fn place(&self, order: i64, queue: &str, commit: bool) {
        let mut db = self.db.lock();
        let tx = db.transaction().expect("begin");
        tx.execute("INSERT INTO orders (id) VALUES (?1)", [order])
            .expect("insert");
        self.outbox
            .enqueue(&tx, "", queue, &OrderPlaced { order })
            .expect("enqueue");
        if commit {
            tx.commit().expect("commit");
        } else {
            tx.rollback().expect("rollback");
        }
    }

    async fn orders(&self) -> Vec<i64> {
        let db = self.db.lock();
        let mut st = db
            .prepare("SELECT id FROM orders ORDER BY id")
            .expect("prepare");
        st.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    async fn unsent(&self) -> usize {
        let db = self.db.lock();
        db.query_row(
            "SELECT count(*) FROM amqp_outbox WHERE sent_at IS NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("count") as usize
    }
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "host=127.0.0.1 user=postgres dbname=test".into())
}

struct Postgres {
    client: tokio::sync::Mutex<tokio_postgres::Client>,
    outbox_table: String,
    orders_table: String,
}

impl Postgres {
    async fn new() -> Self {
        let url = database_url();
        let (client, connection) = within(
            "postgres connect",
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e} (set DATABASE_URL)"));
        tokio::spawn(connection);
        let suffix = unique("t").replace('.', "_");
        let outbox_table = format!("outbox_{suffix}");
        let orders_table = format!("orders_{suffix}");
        PostgresOutbox::new(&url)
            .table(&outbox_table)
            .create_table(&client)
            .await
            .expect("outbox table");
        client
            .batch_execute(&format!(
                "CREATE TABLE {orders_table} (id BIGINT PRIMARY KEY)"
            ))
            .await
            .expect("orders table");
        Self {
            client: tokio::sync::Mutex::new(client),
            outbox_table,
            orders_table,
        }
    }

    fn outbox(&self) -> PostgresOutbox {
        PostgresOutbox::new(database_url()).table(&self.outbox_table)
    }

    async fn drop_tables(&self) {
        let client = self.client.lock().await;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {};",
                self.outbox_table, self.orders_table
            ))
            .await
            .expect("drop");
    }
}

impl Shop for Postgres {
    fn source(&self) -> Box<dyn FnOnce() -> Box<dyn OutboxSourceBox> + Send> {
        let outbox = self.outbox();
        Box::new(move || Box::new(outbox) as Box<dyn OutboxSourceBox>)
    }

    async fn place(&self, order: i64, queue: &str, commit: bool) {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.expect("begin");
        tx.execute(
            &format!("INSERT INTO {} (id) VALUES ($1)", self.orders_table),
            &[&order],
        )
        .await
        .expect("insert");
        self.outbox()
            .enqueue(&tx, "", queue, &OrderPlaced { order })
            .await
            .expect("enqueue");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
    }

    async fn orders(&self) -> Vec<i64> {
        let client = self.client.lock().await;
        client
            .query(
                &format!("SELECT id FROM {} ORDER BY id", self.orders_table),
                &[],
            )
            .await
            .expect("query")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn unsent(&self) -> usize {
        let client = self.client.lock().await;
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE sent_at IS NULL",
                    self.outbox_table
                ),
                &[],
            )
            .await
            .expect("count");
        row.get::<_, i64>(0) as usize
    }
}

async fn connect(url: &str, name: &str) -> Connection {
    let factory = ConnectionFactory::new(url)
        .connection_name(unique(name))
        .recovery_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .unreachable_after(Duration::from_millis(500));
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

/// Receives `n` events from `queue`.
async fn events(template: &Template, queue: &str, n: usize, limit: Duration) -> Vec<OrderPlaced> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match template
            .receive_and_convert(queue, left)
            .await
            .expect("receive")
        {
            Some(e) => out.push(e),
            None => panic!("{} of {n} events arrived in {limit:?}: {out:?}", out.len()),
        }
    }
    out
}

/// Writes while the broker is unreachable succeed; the messages arrive, in order, after it is
/// back; the rolled-back order sends nothing.
async fn an_outage_delays_but_loses_nothing(b: &TestBroker, shop: &impl Shop) {
    let direct = connect(b.url(), "patterns.outbox.direct").await;
    let q = unique("patterns.outbox");
    direct.declare(Queue::transient(&q)).await.expect("declare");
    let reader = Template::new(direct.clone());

    let proxy = Proxy::start(&b.addr()).await;
    let through_proxy = connect(&b.url_via(proxy.addr()), "patterns.outbox.relay").await;
    let relay = shop.source()()
        .relay(Template::new(through_proxy.clone()))
        .spawn();

    shop.place(1, &q, true).await;
    assert_eq!(
        events(&reader, &q, 1, common::WAIT).await,
        vec![OrderPlaced { order: 1 }]
    );

    proxy.down();
    for order in 2..=5 {
        shop.place(order, &q, true).await;
    }
    shop.place(6, &q, false).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        shop.orders().await,
        vec![1, 2, 3, 4, 5],
        "the writes committed during the outage"
    );
    assert_eq!(shop.unsent().await, 4, "their messages wait in the outbox");
    assert!(
        reader
            .receive(&q, Duration::from_millis(10))
            .await
            .expect("receive")
            .is_none(),
        "nothing reached the broker"
    );

    proxy.forward();
    let arrived = events(&reader, &q, 4, Duration::from_secs(15)).await;
    let orders: Vec<i64> = arrived.iter().map(|e| e.order).collect();
    assert_eq!(
        orders,
        vec![2, 3, 4, 5],
        "every message, in order, after the outage"
    );
    tokio::time::sleep(common::QUIET).await;
    assert!(
        reader
            .receive(&q, Duration::from_millis(10))
            .await
            .expect("receive")
            .is_none(),
        "nothing from the rolled-back transaction, no duplicates"
    );
    assert_eq!(shop.unsent().await, 0);
    relay.shutdown().await;
    through_proxy.close().await;
    direct.close().await;
}

/// A source whose first `mark_sent` fails, as if the relay died after the broker's confirm.
#[derive(Debug)]
struct CrashOnce<S> {
    inner: S,
    crashed: AtomicBool,
}

impl<S: OutboxSource> OutboxSource for CrashOnce<S> {
    fn unsent(&self, limit: usize) -> BoxFuture<'_, amqp_core::Result<Vec<OutboxRow>>> {
        self.inner.unsent(limit)
    }

    fn mark_sent(&self, id: i64) -> BoxFuture<'_, amqp_core::Result<()>> {
        if !self.crashed.swap(true, Ordering::SeqCst) {
            return Box::pin(async {
                Err(amqp_core::Error::Configuration(
                    "the relay died here".into(),
                ))
            });
        }
        self.inner.mark_sent(id)
    }
}

/// A relay that dies between the confirm and marking the row: the next run publishes it again,
/// with the same message id.
async fn a_relay_crash_duplicates_never_loses(
    b: &TestBroker,
    shop: &impl Shop,
    source: impl OutboxSource,
) {
    let conn = connect(b.url(), "patterns.outbox.crash").await;
    let q = unique("patterns.outbox.crash");
    conn.declare(Queue::transient(&q)).await.expect("declare");
    let template = Template::new(conn.clone());
    shop.place(1, &q, true).await;
    let relay = Relay::new(
        CrashOnce {
            inner: source,
            crashed: AtomicBool::new(false),
        },
        template.clone(),
    );
    assert!(
        relay.relay_once().await.is_err(),
        "the first run dies before marking"
    );
    assert_eq!(shop.unsent().await, 1);
    assert_eq!(relay.relay_once().await.expect("second run"), 1);
    assert_eq!(shop.unsent().await, 0);
    let first = template
        .receive(&q, common::WAIT)
        .await
        .expect("receive")
        .expect("a copy");
    let second = template
        .receive(&q, common::WAIT)
        .await
        .expect("receive")
        .expect("a duplicate");
    assert_eq!(
        first.properties.message_id(),
        second.properties.message_id()
    );
    assert_eq!(first.body, second.body);
    assert!(
        template
            .receive(&q, Duration::from_millis(50))
            .await
            .expect("receive")
            .is_none()
    );
    conn.close().await;
}

async fn sqlite_outage(b: TestBroker) {
    an_outage_delays_but_loses_nothing(&b, &Sqlite::new()).await;
}

async fn postgres_outage(b: TestBroker) {
    let shop = Postgres::new().await;
    an_outage_delays_but_loses_nothing(&b, &shop).await;
    shop.drop_tables().await;
}

async fn sqlite_relay_crash(b: TestBroker) {
    let shop = Sqlite::new();
    let source = shop.outbox.clone();
    a_relay_crash_duplicates_never_loses(&b, &shop, source).await;
}

async fn postgres_relay_crash(b: TestBroker) {
    let shop = Postgres::new().await;
    let source = shop.outbox();
    a_relay_crash_duplicates_never_loses(&b, &shop, source).await;
    shop.drop_tables().await;
}

conformance!(
    sqlite_outage,
    postgres_outage,
    sqlite_relay_crash,
    postgres_relay_crash
);
