//! The embedding API: build, start, inspect and stop a broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, User};
use crate::connection;
use crate::error::Error;
use crate::management;
use crate::memory::MemoryMonitor;
use crate::registry::{ConnectionInfo, Registry};
use crate::store::io::FileStorage;
use crate::store::lock::{DirLock, LockError};
use crate::store::{Store, StoreOptions};
use crate::vhost::{QueueLimits, Vhost};

/// Builds a [`Broker`]; every setting has RabbitMQ's default.
#[derive(Debug, Default)]
pub struct BrokerBuilder {
    config: Config,
    users_set: bool,
}

impl BrokerBuilder {
    /// The AMQP port; 0 picks a free one (read it back with [`Broker::port`]).
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self
    }

    /// The address to listen on (default 127.0.0.1).
    pub fn bind(mut self, addr: std::net::IpAddr) -> Self {
        self.config.bind = addr;
        self
    }

    /// Adds a user. The first call replaces the default guest/guest.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        if !self.users_set {
            self.config.users.clear();
            self.users_set = true;
        }
        self.config.users.push(User::new(name, password));
        self
    }

    /// The heartbeat interval proposed to clients, in seconds (0: none).
    pub fn heartbeat_secs(mut self, secs: u16) -> Self {
        self.config.heartbeat_secs = secs;
        self
    }

    /// The largest frame accepted and offered (at least 4096, as the spec requires).
    pub fn frame_max_bytes(mut self, bytes: u32) -> Self {
        self.config.frame_max_bytes = bytes.max(4096);
        self
    }

    /// The largest message body accepted.
    pub fn max_message_bytes(mut self, bytes: u64) -> Self {
        self.config.max_message_bytes = bytes;
        self
    }

    /// Most connections served at once (default 10 000, at least 1). Further clients wait, as
    /// with RabbitMQ's `connection_max`: they are accepted when a connection closes.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections.max(1);
        self
    }

    /// Most channels per connection offered in `connection.tune` (default 2047, at least 1).
    /// Opening one more closes the connection with 530 NOT_ALLOWED.
    pub fn channel_max(mut self, channels: u16) -> Self {
        self.config.channel_max = channels.max(1);
        self
    }

    /// Most consumers per channel (default: no limit). One more `basic.consume` closes the
    /// connection with 530 NOT_ALLOWED, as RabbitMQ's `consumer_max_per_channel`.
    pub fn max_consumers_per_channel(mut self, consumers: usize) -> Self {
        self.config.max_consumers_per_channel = Some(consumers);
        self
    }

    /// Keeps durable exchanges, queues, bindings and persistent messages in `dir`, and
    /// recovers them from there at start. Without it the broker keeps everything in memory.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.data_dir = Some(dir.into());
        self
    }

    /// Size at which a queue's log segment is closed and a new one started (default 16 MiB).
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.config.segment_bytes = bytes.max(4096);
        self
    }

    /// Flow control: the bytes of message bodies held in memory at which publishing connections
    /// are blocked until consumers drain the queues (default: 40% of the machine's memory; 0
    /// blocks every publisher).
    pub fn memory_high_watermark_bytes(mut self, bytes: u64) -> Self {
        self.config.memory_high_watermark_bytes = bytes;
        self
    }

    /// Memory each durable queue may use for the messages it holds (default 16 MiB); persistent
    /// messages beyond it are kept on disk only and read back when consumers reach them.
    pub fn queue_memory_budget_bytes(mut self, bytes: u64) -> Self {
        self.config.queue_memory_budget_bytes = bytes;
        self
    }

    /// Caps every queue at `bytes` of ready message bodies, as a RabbitMQ operator policy
    /// `max-length-bytes` does (default: no cap). A queue's own lower `x-max-length-bytes`
    /// still applies; past the cap its `x-overflow` decides (drop-head by default;
    /// reject-publish nacks the publisher).
    pub fn queue_max_length_bytes(mut self, bytes: u64) -> Self {
        self.config.queue_max_length_bytes = Some(bytes);
        self
    }

    /// Serves the management HTTP API on `port` (0 picks a free one; RabbitMQ's is 15672).
    /// Off unless asked for; the binary serves it on 15672 by default.
    pub fn management_port(mut self, port: u16) -> Self {
        self.config.management_port = Some(port);
        self
    }

    /// Replaces every setting at once (the binary builds a [`Config`] from its command line).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self.users_set = true;
        self
    }

    /// Binds the port and starts serving. Returns once the broker accepts connections.
    pub async fn start(self) -> Result<Broker, Error> {
        let addr = SocketAddr::new(self.config.bind, self.config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener.local_addr()?;
        let management_listener = match self.config.management_port {
            Some(port) => {
                let addr = SocketAddr::new(self.config.bind, port);
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| Error::Bind { addr, source })?,
                )
            }
            None => None,
        };
        let config = Arc::new(self.config);
        let store = match &config.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                let options = StoreOptions {
                    segment_bytes: config.segment_bytes,
                    queue_memory_budget_bytes: config.queue_memory_budget_bytes,
                };
                let opened = tokio::task::spawn_blocking({
                    let dir = dir.clone();
                    move || open_store(&dir, options)
                })
                .await
                .map_err(|e| Error::Store {
                    dir: dir.clone(),
                    source: std::io::Error::other(e),
                })?;
                Some(opened?)
            }
            None => None,
        };
        let memory = MemoryMonitor::new(config.memory_high_watermark_bytes);
        let limits = QueueLimits {
            max_length_bytes: config.queue_max_length_bytes,
        };
        let vhost = match store {
            Some((store, recovered)) => {
                let vhost = Vhost::with_limits("/", Some(store), memory, limits);
                vhost.restore(recovered);
                vhost
            }
            None => Vhost::with_limits("/", None, memory, limits),
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(Signal::Run);
        let registry = Arc::new(Registry::default());
        let server = Server {
            config: config.clone(),
            vhost: vhost.clone(),
            registry: registry.clone(),
            signal: shutdown_rx,
        };
        let task = tokio::spawn(server.run(listener));
        tracing::info!(%local_addr, "amqp-broker listening");
        let management_addr = match management_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let shared = Arc::new(management::Shared {
                    config: config.clone(),
                    vhost: vhost.clone(),
                    registry: registry.clone(),
                    amqp_addr: local_addr,
                });
                tokio::spawn(management::serve(listener, shared, shutdown_tx.subscribe()));
                tracing::info!(%addr, "management API listening");
                Some(addr)
            }
            None => None,
        };
        Ok(Broker {
            local_addr,
            management_addr,
            config,
            vhost,
            registry,
            signal: shutdown_tx,
            task: Some(task),
        })
    }
}

/// Locks the data directory (see [`crate::store::lock`]), then opens and recovers the store.
/// Blocking.
fn open_store(
    dir: &std::path::Path,
    options: StoreOptions,
) -> Result<(Arc<Store>, crate::store::Recovered), Error> {
    let store_error = |source| Error::Store {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(store_error)?;
    let lock = DirLock::acquire(dir).map_err(|e| match e {
        LockError::Locked(l) => Error::DataDirLocked {
            dir: l.dir,
            pid: l.pid,
        },
        LockError::Io(source) => store_error(source),
    })?;
    let (store, recovered) =
        Store::open(Arc::new(FileStorage), dir, options).map_err(store_error)?;
    store.hold_lock(lock);
    Ok((store, recovered))
}

/// What the accept loop and every connection watch for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Keep serving.
    Run,
    /// Close everything and stop accepting.
    Shutdown,
}

/// A running broker. Dropping it stops the accept loop; [`Broker::shutdown`] also waits for
/// connections to close.
#[derive(Debug)]
pub struct Broker {
    local_addr: SocketAddr,
    management_addr: Option<SocketAddr>,
    config: Arc<Config>,
    vhost: Arc<Vhost>,
    registry: Arc<Registry>,
    signal: watch::Sender<Signal>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Broker {
    /// A builder with default settings.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port the broker listens on (the real one when started with port 0).
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The port of the management HTTP API, if it is served.
    pub fn management_port(&self) -> Option<u16> {
        self.management_addr.map(|a| a.port())
    }

    /// The management API's base URL (`http://127.0.0.1:PORT`), if it is served.
    pub fn management_url(&self) -> Option<String> {
        self.management_addr.map(|a| format!("http://{a}"))
    }

    /// A URL for the first configured user and the default vhost:
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn amqp_url(&self) -> String {
        let (user, password) = self
            .config
            .users
            .first()
            .map(|u| (u.name.as_str(), u.password.as_str()))
            .unwrap_or(("guest", "guest"));
        format!("amqp://{user}:{password}@{}/%2f", self.local_addr)
    }

    /// The client connections being served.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.registry.list()
    }

    /// Closes every client connection with 320 CONNECTION_FORCED, as `rabbitmqctl
    /// close_all_connections` does; new connections are still accepted. Returns how many.
    pub fn close_all_connections(&self) -> usize {
        self.registry.close_where(|_| true)
    }

    /// Closes the connections whose client gave this `connection_name` (320
    /// CONNECTION_FORCED); returns how many.
    pub fn close_connections_named(&self, name: &str) -> usize {
        self.registry
            .close_where(|c| c.name.as_deref() == Some(name))
    }

    /// Bytes of message bodies the broker holds now (queued, unacked, delayed or on their way
    /// out): what flow control compares with the memory high-water mark.
    pub fn memory_used_bytes(&self) -> u64 {
        self.vhost.memory.used_bytes()
    }

    /// Number of queues in the default vhost (for tests and metrics).
    pub fn queue_count(&self) -> usize {
        self.vhost.queue_count()
    }

    /// Stops accepting, closes every connection (320 CONNECTION_FORCED) and waits for them to end.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.signal.send_replace(Signal::Shutdown);
        if let Some(task) = self.task.take() {
            // The accept loop waits for its connections; a panic there is a bug, not a user error.
            if let Err(e) = task.await {
                tracing::error!("accept loop failed: {e}");
            }
        }
        if let Some(store) = self.vhost.store().cloned() {
            // Syncs what is pending and stops the writer thread.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal.send_replace(Signal::Shutdown);
    }
}

/// The accept loop: one task per connection, bounded by a semaphore.
struct Server {
    config: Arc<Config>,
    vhost: Arc<Vhost>,
    registry: Arc<Registry>,
    signal: watch::Receiver<Signal>,
}

impl Server {
    async fn run(mut self, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        let mut connections = JoinSet::new();
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = self.signal.wait_for(|s| *s == Signal::Shutdown) => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.signal.wait_for(|s| *s == Signal::Shutdown) => break,
            };
            match accepted {
                Ok((socket, peer)) => {
                    let ctx = connection::Context {
                        config: self.config.clone(),
                        vhost: self.vhost.clone(),
                        registry: self.registry.clone(),
                        signal: self.signal.clone(),
                    };
                    connections.spawn(async move {
                        connection::serve(socket, peer, ctx).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("connections did not close within 5 s; aborting them");
            connections.abort_all();
        }
    }
}
