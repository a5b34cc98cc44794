//! The running system: the product service's catalog with its outbox relay, and the two
//! listeners with the copies they keep, all on one `App`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_core::outbox::RelayHandle;
use amqp_core::{App, RunningApp};

use super::search::{self, SearchIndex};
use super::site::{self, Site};
use super::{Catalog, Database, LISTENERS};

/// The running system: the product service's catalog, its outbox relay, and the two listeners.
#[derive(Debug)]
pub struct DataSync {
    pub catalog: Arc<Catalog>,
    pub out: PathBuf,
    app: RunningApp,
    relay: RelayHandle,
}

impl DataSync {
    /// Opens the catalog and the outputs under `out`, starts the listeners and the relay.
    pub async fn start(app: App, db: &Database, out: &Path) -> anyhow::Result<Self> {
        let catalog = Arc::new(Catalog::open(db).await?);
        let site = Site::open(out.join("site"))?;
        let search = SearchIndex::open(out.join("search"))?;
        let app = app
            .listeners(LISTENERS)
            .state(site)
            .state(search)
            .start()
            .await?;
        let relay = db
            .relay(app.template().clone())?
            .poll_interval(Duration::from_millis(50))
            .spawn();
        Ok(Self {
            catalog,
            out: out.to_owned(),
            app,
            relay,
        })
    }

    /// Waits until the site and the search index match the database; the error is the last
    /// difference seen.
    pub async fn wait_in_sync(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let products = self.catalog.products().await?;
            let diff = site::check(&self.out.join("site"), &products)
                .and_then(|()| search::check(&self.out.join("search"), &products));
            match diff {
                Ok(()) => return Ok(started.elapsed()),
                Err(diff) if started.elapsed() > timeout => {
                    anyhow::bail!("not in sync after {timeout:?}: {diff}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn shutdown(self) {
        self.relay.shutdown().await;
        self.app.shutdown().await;
    }
}

/// `changes` creates, updates and deletes, in a fixed pseudo-random mix, `pause` apart.
pub async fn burst(catalog: &Catalog, changes: usize, pause: Duration) -> anyhow::Result<()> {
    let mut live: Vec<i64> = catalog.products().await?.iter().map(|p| p.id).collect();
    for n in 0..changes {
        let pick = (n * 7919) % live.len().max(1);
        if live.len() < 5 || n % 5 == 0 {
            live.push(
                catalog
                    .create(&format!("Gadget {n}"), 100 + n as i64)
                    .await?
                    .id,
            );
        } else if n % 11 == 0 {
            catalog.delete(live.swap_remove(pick)).await?;
        } else {
            catalog
                .update(
                    live[pick],
                    &format!("Gadget {n} mk{}", n % 3),
                    500 + n as i64,
                )
                .await?;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(())
}
