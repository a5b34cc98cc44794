//! [`App`]: runs every `#[rabbit_listener]` in the program. It connects (to `AMQP_URL`, or to an
//! embedded broker when none is set), declares what the listeners name, starts their containers,
//! and shuts them down gracefully on Ctrl-C or SIGTERM.
//!
//! Configuration comes from the environment, in the spirit of `spring.rabbitmq.*`, and every
//! setting can be overridden in code:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `AMQP_URL` | the broker, `amqp://user:pass@host:port/vhost` (`amqps://` for TLS); for a cluster, its nodes comma-separated (tried in turn, at start and on every reconnection) | unset: start the embedded broker |
//! | `AMQP_TLS_CA_FILE` | CA certificates (PEM) trusted for `amqps://` besides Mozilla's root CAs | unset: Mozilla's root CAs only |
//! | `AMQP_PREFETCH` | prefetch for listeners that do not set one | 250 |
//! | `AMQP_CONCURRENCY` | consumers per listener that does not set it | 1 |
//! | `AMQP_LISTENERS` | comma-separated listener ids (or the last part of them) to run | all |
//! | `AMQP_CONNECTION_NAME` | the connection name the broker shows | the program's name |
//! | `REDIS_URL` | with the `idempotent-redis` feature: where `idempotent` listeners keep their records | unset: in memory |

pub(crate) mod definition;

use std::sync::Arc;
use std::time::Duration;

use crate::connection::{Connection, ConnectionFactory, hide_password};
use crate::error::{Error, Result};
use crate::extract::{Delivery, HandlerFn, Outcome, StateMap};
use crate::health::{Health, HealthCheck};
use crate::idempotent::Idempotency;
use crate::listener::{Listener, ListenerHandle};
use crate::template::Template;
use definition::ListenerDefinition;

/// Watches what listeners receive and return (the test harness's hook).
pub(crate) type Spy = Arc<dyn Fn(&ListenerDefinition, &Delivery, &Outcome) + Send + Sync>;

/// Runs the program's listeners. Build with [`App::new`] (which reads the environment), adjust
/// in code, then [`run`](App::run) (until Ctrl-C) or [`start`](App::start).
pub struct App {
    url: Option<String>,
    /// The CA file trusted for `amqps://` (see [`ConnectionFactory::tls_ca_file`]).
    tls_ca_file: Option<std::path::PathBuf>,
    embedded: bool,
    connection_name: String,
    state: StateMap,
    only: Option<Vec<String>>,
    prefetch: u16,
    concurrency: usize,
    shutdown_timeout: Duration,
    idempotency: Option<Idempotency>,
    spy: Option<Spy>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("url", &self.url.as_deref().map(hide_password))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("embedded", &self.embedded)
            .field("only", &self.only)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An app configured from the environment (see the table in the module docs).
    pub fn new() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let program = std::env::args()
            .next()
            .and_then(|p| {
                std::path::Path::new(&p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "amqp-core".into());
        Self {
            url: env("AMQP_URL"),
            tls_ca_file: env("AMQP_TLS_CA_FILE").map(Into::into),
            embedded: false,
            connection_name: env("AMQP_CONNECTION_NAME").unwrap_or(program),
            state: StateMap::default(),
            only: env("AMQP_LISTENERS").map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            prefetch: env("AMQP_PREFETCH")
                .and_then(|v| v.parse().ok())
                .unwrap_or(250),
            concurrency: env("AMQP_CONCURRENCY")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1),
            shutdown_timeout: Duration::from_secs(30),
            idempotency: None,
            spy: None,
        }
    }

    /// Connects to this broker (overrides `AMQP_URL`); like the variable, it may list a
    /// cluster's nodes comma-separated.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self.embedded = false;
        self
    }

    /// Connects to the first of these nodes that answers, and on each reconnection tries them
    /// again in turn, from the first (overrides `AMQP_URL`). For a RabbitMQ cluster: list every
    /// node, and the app moves to another when the one it uses goes down.
    ///
    /// ```
    /// use amqp_core::App;
    /// let app = App::new().addresses([
    ///     "amqp://guest:guest@rabbit-1:5672/%2f",
    ///     "amqp://guest:guest@rabbit-2:5672/%2f",
    /// ]);
    /// # let _ = app;
    /// ```
    pub fn addresses<I, S>(self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        self.url(urls.join(","))
    }

    /// Trusts the CA certificate(s) in this PEM file for `amqps://` URLs (overrides
    /// `AMQP_TLS_CA_FILE`); a file that cannot be read or holds no certificate fails
    /// [`start`](App::start).
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Starts the embedded broker even if `AMQP_URL` is set (tests use this).
    pub fn embedded(mut self) -> Self {
        self.url = None;
        self.embedded = true;
        self
    }

    /// Shares a value with handlers, which take it as [`crate::State<T>`].
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Runs only these listeners (ids, or their last `::` part); overrides `AMQP_LISTENERS`.
    pub fn listeners<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.only = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Prefetch for listeners that do not set one.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Consumers per listener that does not set it.
    pub fn concurrency(mut self, consumers: usize) -> Self {
        self.concurrency = consumers.max(1);
        self
    }

    /// The connection name the broker shows.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// How long shutdown lets in-flight handlers run.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Where `#[rabbit_listener(idempotent)]` listeners record message ids, and for how long.
    /// Without it they share a [`crate::idempotent::RedisStore`] on `REDIS_URL` (with the
    /// `idempotent-redis` feature and the variable set), or else one in-memory store.
    ///
    /// ```
    /// use amqp_core::App;
    /// use amqp_core::idempotent::{Idempotency, MemoryStore};
    ///
    /// let app = App::new().idempotency(Idempotency::new(MemoryStore::with_capacity(1_000_000)));
    /// # let _ = app;
    /// ```
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// The idempotency settings for `idempotent` listeners: as given, from `REDIS_URL`, or in
    /// memory.
    async fn idempotency_for_listeners(&self) -> Result<Idempotency> {
        if let Some(idempotency) = &self.idempotency {
            return Ok(idempotency.clone());
        }
        #[cfg(feature = "idempotent-redis")]
        if std::env::var("REDIS_URL").is_ok_and(|v| !v.trim().is_empty()) {
            let store = crate::idempotent::RedisStore::from_env().await?;
            tracing::info!("idempotent listeners keep their records in Redis (REDIS_URL)");
            return Ok(Idempotency::new(store));
        }
        Ok(Idempotency::new(crate::idempotent::MemoryStore::new()))
    }

    pub(crate) fn spy(mut self, spy: Spy) -> Self {
        self.spy = Some(spy);
        self
    }

    /// The listeners this app would run, sorted by id; two with the same id are an error that
    /// names both.
    pub fn selected_listeners(&self) -> Result<Vec<&'static ListenerDefinition>> {
        let all = ListenerDefinition::all();
        for pair in all.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(Error::Configuration(format!(
                    "two listeners have the id '{}': at {} and at {}; give one of them another `id = \"...\"`",
                    pair[0].id, pair[0].location, pair[1].location
                )));
            }
        }
        let Some(only) = &self.only else {
            return Ok(all);
        };
        let matches = |d: &ListenerDefinition, sel: &str| {
            d.id == sel || d.id.rsplit("::").next() == Some(sel)
        };
        for sel in only {
            if !all.iter().any(|d| matches(d, sel)) {
                let known: Vec<_> = all.iter().map(|d| d.id).collect();
                return Err(Error::Configuration(format!(
                    "no listener '{sel}' (known: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        Ok(all
            .into_iter()
            .filter(|d| only.iter().any(|sel| matches(d, sel)))
            .collect())
    }

    /// Connects, declares, and starts every selected listener; returns the running app.
    pub async fn start(self) -> Result<RunningApp> {
        let definitions = self.selected_listeners()?;
        #[cfg(feature = "embedded-broker")]
        let mut broker = None;
        let url = match self.url.clone() {
            Some(url) => url,
            #[cfg(feature = "embedded-broker")]
            None => {
                let b = amqp_broker::Broker::builder().port(0).start().await?;
                let url = b.amqp_url();
                if self.embedded {
                    tracing::info!("embedded broker at {url}");
                } else {
                    tracing::info!("AMQP_URL is not set: started the embedded broker at {url}");
                }
                broker = Some(b);
                url
            }
            #[cfg(not(feature = "embedded-broker"))]
            None => {
                return Err(Error::Configuration(
                    "AMQP_URL is not set and the embedded-broker feature is off".into(),
                ));
            }
        };
        let addresses = split_addresses(&url);
        if addresses.is_empty() {
            return Err(Error::Configuration(format!(
                "AMQP_URL (or App::url) lists no address: '{url}'"
            )));
        }
        let mut factory =
            ConnectionFactory::with_addresses(addresses).connection_name(&self.connection_name);
        if let Some(path) = &self.tls_ca_file {
            factory = factory.tls_ca_file(path)?;
        }
        let conn = factory.connect().await?;
        let idempotency = if definitions.iter().any(|d| d.idempotent) {
            Some(self.idempotency_for_listeners().await?)
        } else {
            None
        };
        let mut handles = Vec::with_capacity(definitions.len());
        for def in &definitions {
            conn.declare(def.declarations()).await?;
            let handler: HandlerFn = match &self.spy {
                None => Arc::new(def.handler),
                Some(spy) => spied(def, spy.clone()),
            };
            // A partition has one active consumer: the app-wide concurrency does not apply.
            let concurrency = match def.partitions {
                Some(_) => def.concurrency.unwrap_or(1),
                None => def.concurrency.unwrap_or(self.concurrency),
            };
            let mut listener = Listener::on(def.queue)
                .id(def.id)
                .prefetch(def.prefetch.unwrap_or(self.prefetch))
                .concurrency(concurrency)
                .ack_mode(def.ack)
                .shutdown_timeout(self.shutdown_timeout)
                .state_map(self.state.clone());
            if let (true, Some(idempotency)) = (def.idempotent, &idempotency) {
                listener = listener.idempotent(idempotency.clone());
            }
            if let Some(rate) = def.rate {
                listener = listener.rate(rate);
            }
            if let Some(breaker) = def.circuit_breaker {
                listener = listener.circuit_breaker(breaker);
            }
            if let Some(retry) = def.retry {
                listener = listener.retry(retry);
            }
            if let Some(n) = def.partitions {
                listener = listener.partitions(n);
            }
            if def.is_quorum() {
                listener = listener.quorum();
            }
            let handle = listener.delivery_handler(handler).start(&conn).await?;
            tracing::info!(listener = def.id, queue = def.queue, "listening");
            handles.push(handle);
        }
        Ok(RunningApp {
            template: Template::new(conn.clone()),
            conn,
            url,
            handles,
            ids: definitions.iter().map(|d| d.id).collect(),
            #[cfg(feature = "embedded-broker")]
            broker,
        })
    }

    /// [`start`](Self::start)s, then runs until Ctrl-C or SIGTERM and shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        let running = self.start().await?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    }
}

/// `AMQP_URL`'s addresses: comma-separated, blanks around them ignored (a comma inside a
/// password is written `%2C`, as in any URL).
fn split_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Wraps a listener's handler so that the spy sees each delivery and its outcome.
fn spied(def: &'static ListenerDefinition, spy: Spy) -> HandlerFn {
    Arc::new(move |delivery: Delivery| {
        let spy = spy.clone();
        let seen = Delivery {
            body: delivery.body.clone(),
            meta: delivery.meta.clone(),
            state: delivery.state.clone(),
            template: delivery.template.clone(),
        };
        let call = (def.handler)(delivery);
        Box::pin(async move {
            let outcome = call.await;
            spy(def, &seen, &outcome);
            outcome
        })
    })
}

/// A started [`App`].
#[derive(Debug)]
pub struct RunningApp {
    conn: Connection,
    template: Template,
    url: String,
    handles: Vec<ListenerHandle>,
    ids: Vec<&'static str>,
    #[cfg(feature = "embedded-broker")]
    broker: Option<amqp_broker::Broker>,
}

impl RunningApp {
    /// A template on the app's connection.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The app's connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The broker URL in use (the embedded broker's when it was started); for a cluster, the
    /// addresses as configured, comma-separated.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A health check of the connection and every listener, to clone into an HTTP handler
    /// (`GET /health`: [`Health`] serializes to JSON).
    pub fn health_check(&self) -> HealthCheck {
        self.handles
            .iter()
            .fold(HealthCheck::new(&self.conn), HealthCheck::listener)
    }

    /// The connection's and the listeners' state now (see [`health_check`](Self::health_check)).
    pub fn health(&self) -> Health {
        self.health_check().health()
    }

    /// The ids of the running listeners.
    pub fn listener_ids(&self) -> &[&'static str] {
        &self.ids
    }

    /// Stops every listener gracefully, closes the connection, and stops the embedded broker.
    pub async fn shutdown(self) {
        futures::future::join_all(self.handles.into_iter().map(ListenerHandle::shutdown)).await;
        self.conn.close().await;
        #[cfg(feature = "embedded-broker")]
        if let Some(broker) = self.broker {
            if let Err(e) = broker.shutdown().await {
                tracing::warn!("embedded broker shutdown: {e}");
            }
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::split_addresses;

    #[test]
    fn amqp_url_lists_a_cluster_comma_separated() {
        assert_eq!(
            split_addresses("amqp://h1:5672/%2f, amqp://h2:5672/%2f ,,"),
            ["amqp://h1:5672/%2f", "amqp://h2:5672/%2f"]
        );
        assert_eq!(
            split_addresses("amqp://u:p%2Cq@h/%2f"),
            ["amqp://u:p%2Cq@h/%2f"]
        );
        assert!(split_addresses(" , ").is_empty());
    }
}
