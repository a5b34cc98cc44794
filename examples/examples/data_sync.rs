//! data_sync: keeping copies of a database in sync through events (the notes' 数据同步). A
//! product service creates, updates and deletes products in a database (SQLite by default,
//! PostgreSQL with `DATABASE_URL`) and writes a `ProductChanged` event in the same transaction
//! (the transactional outbox); a relay publishes the events to a topic exchange. Two listeners,
//! each with its own queue, keep their copies in sync:
//!
//! - the static site: `site/products/ID.html` per product and `site/index.html`;
//! - the search index: `search/search-index.json`.
//!
//! Each event carries the product's version, and each listener remembers the newest version it
//! applied (deleted products included), so a redelivered older event never overwrites a newer
//! page. With durable queues and persistent messages, a broker that goes down in the middle of a
//! burst of changes costs a delay, not an update: the test stops the broker mid-burst, starts it
//! again, and checks every page against the database.
//!
//! ```text
//! cargo run -p examples --example data_sync                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example data_sync # RabbitMQ
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p examples --example data_sync
//! OUTPUT_DIR=/tmp/shop cargo run -p examples --example data_sync   # where the site goes
//! ```

#[path = "data_sync/catalog.rs"]
mod catalog;
#[path = "data_sync/event.rs"]
mod event;
#[path = "data_sync/replica.rs"]
mod replica;
#[path = "data_sync/search.rs"]
pub mod search;
#[path = "data_sync/site.rs"]
pub mod site;
#[path = "data_sync/system.rs"]
mod system;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use amqp_core::{App, ListenerError, State, rabbit_listener};
pub use catalog::{Catalog, Database};
pub use event::{Product, ProductChanged};
use search::{IndexFile, SearchIndex};
use site::Site;
pub use system::{DataSync, burst};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 2] = ["data_sync.site", "data_sync.search"];

/// Where product changes are published (`product.created`, `product.updated`, `product.deleted`).
pub const EXCHANGE: &str = "data_sync.products";

/// A listener's answer: done (an older version is ignored, and said so), or back to the queue
/// to be tried again after an error that time may cure (a full disk, say).
fn outcome(
    copy: &str,
    change: &ProductChanged,
    applied: anyhow::Result<bool>,
) -> Result<(), ListenerError> {
    if !applied.map_err(|e| ListenerError::requeue(e.to_string()))? {
        let (id, version) = (change.id(), change.version());
        println!("[{copy}] ignored version {version} of product {id}: it has a newer one");
    }
    Ok(())
}

#[rabbit_listener(
    id = "data_sync.site",
    queue = "data_sync.site",
    exchange = "data_sync.products",
    exchange_type = "topic",
    key = "product.*",
    concurrency = 1
)]
async fn update_site(
    State(site): State<Site>,
    change: ProductChanged,
) -> Result<(), ListenerError> {
    outcome("site", &change, site.apply(&change))
}

#[rabbit_listener(
    id = "data_sync.search",
    queue = "data_sync.search",
    exchange = "data_sync.products",
    exchange_type = "topic",
    key = "product.#",
    concurrency = 1
)]
async fn update_search(
    State(index): State<SearchIndex>,
    change: ProductChanged,
) -> Result<(), ListenerError> {
    outcome("search", &change, index.apply(&change))
}

/// The demo's outcome.
#[derive(Debug)]
pub struct Report {
    pub products: Vec<Product>,
    pub lamps: Vec<Product>,
    pub in_sync_after: Duration,
    pub burst: usize,
    pub burst_in_sync_after: Duration,
}

/// A few named changes, then a burst of 200; waits for the copies to match each time. Starts
/// afresh: empties the catalog and the output folder first.
pub async fn run(app: App, db: Database, out: &Path) -> anyhow::Result<Report> {
    Catalog::open(&db).await?.clear().await?;
    for copy in ["site", "search"] {
        let _ = std::fs::remove_dir_all(out.join(copy));
    }
    let sync = DataSync::start(app, &db, out).await?;
    let catalog = &sync.catalog;
    let lamp = catalog.create("Desk lamp", 2999).await?;
    let desk = catalog.create("Oak desk", 24900).await?;
    let shade = catalog.create("Lamp shade", 1500).await?;
    catalog.create("Office chair", 12900).await?;
    catalog.update(lamp.id, "Desk lamp", 2499).await?;
    catalog.update(desk.id, "Oak standing desk", 31900).await?;
    catalog.delete(shade.id).await?;
    let in_sync_after = sync.wait_in_sync(Duration::from_secs(20)).await?;
    let products = catalog.products().await?;
    let index = IndexFile::read(&out.join("search"))?;
    let lamps = index.search("lamp").into_iter().cloned().collect();
    let burst_changes = 200;
    let started = Instant::now();
    burst(catalog, burst_changes, Duration::ZERO).await?;
    sync.wait_in_sync(Duration::from_secs(60)).await?;
    let burst_in_sync_after = started.elapsed();
    sync.shutdown().await;
    Ok(Report {
        products,
        lamps,
        in_sync_after,
        burst: burst_changes,
        burst_in_sync_after,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "7 changes; site and search index in sync after {} ms:",
            self.in_sync_after.as_millis()
        )?;
        for p in &self.products {
            writeln!(
                f,
                "  site/products/{}.html  {} (${:.2}, version {})",
                p.id,
                p.name,
                p.price_cents as f64 / 100.0,
                p.version
            )?;
        }
        let lamps: Vec<_> = self.lamps.iter().map(|p| p.name.as_str()).collect();
        writeln!(f, "search for \"lamp\": {lamps:?}")?;
        writeln!(
            f,
            "{} more changes: in sync {} ms after the first",
            self.burst,
            self.burst_in_sync_after.as_millis()
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
    let out = std::env::var("OUTPUT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join(format!("data_sync-{}", std::process::id())));
    std::fs::create_dir_all(&out)?;
    let db = Database::from_env(out.join("catalog.sqlite"));
    let report = run(App::new(), db, &out).await?;
    print!("\n{report}");
    println!("site: {}", out.join("site/index.html").display());
    Ok(())
}
