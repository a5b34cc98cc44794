//! The embedding API: build, start, inspect and stop a broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::access::{Access, DEFAULT_VHOST};
use crate::config::{Config, TlsFiles, User};
use crate::connection;
use crate::error::Error;
use crate::management;
use crate::memory::MemoryMonitor;
use crate::registry::{ConnectionInfo, Registry};
use crate::store::io::FileStorage;
use crate::store::lock::{DirLock, LockError};
use crate::store::{Store, StoreOptions};
use crate::tls;

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

    /// Adds a user, an administrator with full permissions on the vhost `/` (its password is
    /// kept hashed). The first call replaces the default guest/guest.
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

    /// Also serves AMQP over TLS (amqps) with this certificate chain and private key, both PEM
    /// files read at [`BrokerBuilder::start`] (a missing or bad file is [`Error::Tls`]). The
    /// port is 5671 unless [`BrokerBuilder::tls_port`] says otherwise; the plain port stays open.
    pub fn tls(
        mut self,
        cert_chain_path: impl Into<std::path::PathBuf>,
        key_path: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.tls = Some(TlsFiles {
            cert_chain_path: cert_chain_path.into(),
            key_path: key_path.into(),
        });
        self
    }

    /// The amqps port (default 5671; 0 picks a free one, read it back with
    /// [`Broker::tls_port`]). Only used together with [`BrokerBuilder::tls`].
    pub fn tls_port(mut self, port: u16) -> Self {
        self.config.tls_port = port;
        self
    }

    /// Users who may connect from loopback addresses only (default: `guest`, as RabbitMQ's
    /// `loopback_users`); an empty list lets every user connect from anywhere.
    pub fn loopback_users<S: Into<String>>(mut self, users: impl IntoIterator<Item = S>) -> Self {
        self.config.loopback_users = users.into_iter().map(Into::into).collect();
        self
    }

    /// Imports a RabbitMQ definitions file (users, vhosts, permissions, exchanges, queues,
    /// bindings) at start, as RabbitMQ's `load_definitions`.
    pub fn definitions_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.definitions_file = Some(path.into());
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
        let tls_listener = match &self.config.tls {
            Some(files) => {
                let acceptor = tls::acceptor(files)?;
                let addr = SocketAddr::new(self.config.bind, self.config.tls_port);
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind { addr, source })?;
                Some((listener, acceptor))
            }
            None => None,
        };
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
        let access = tokio::task::spawn_blocking({
            let config = config.clone();
            move || Access::open(&config, memory, store)
        })
        .await
        .map_err(|e| Error::Access(e.to_string()))?
        .map_err(Error::Access)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(Signal::Run);
        let registry = Arc::new(Registry::default());
        let server = Server {
            config: config.clone(),
            access: access.clone(),
            registry: registry.clone(),
            signal: shutdown_rx,
            // One limit for both listeners, as RabbitMQ's connection_max.
            slots: Arc::new(Semaphore::new(config.max_connections)),
        };
        let (tls_addr, tls_task) = match tls_listener {
            Some((listener, acceptor)) => {
                let addr = listener.local_addr()?;
                let task = tokio::spawn(server.clone().run(listener, Some(acceptor)));
                tracing::info!(%addr, "amqps (TLS) listening");
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let task = tokio::spawn(server.run(listener, None));
        tracing::info!(%local_addr, "amqp-broker listening");
        let management_addr = match management_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let shared = Arc::new(management::Shared {
                    access: access.clone(),
                    registry: registry.clone(),
                    amqp_addr: local_addr,
                    management_addr: addr,
                    rates: Default::default(),
                });
                tokio::spawn(management::serve(listener, shared, shutdown_tx.subscribe()));
                tracing::info!(%addr, "management API listening");
                Some(addr)
            }
            None => None,
        };
        Ok(Broker {
            local_addr,
            tls_addr,
            management_addr,
            config,
            access,
            registry,
            signal: shutdown_tx,
            task: Some(task),
            tls_task,
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
    /// Where amqps is served, if TLS is configured.
    tls_addr: Option<SocketAddr>,
    management_addr: Option<SocketAddr>,
    config: Arc<Config>,
    access: Arc<Access>,
    registry: Arc<Registry>,
    signal: watch::Sender<Signal>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The amqps accept loop, if TLS is configured.
    tls_task: Option<tokio::task::JoinHandle<()>>,
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

    /// The amqps port, if TLS is configured (the real one when started with port 0).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_addr.map(|a| a.port())
    }

    /// An `amqps://` URL like [`Broker::amqp_url`] for the TLS port, if TLS is configured:
    /// `amqps://guest:guest@127.0.0.1:PORT/%2f` (the certificate must name that address, or
    /// use a host name it names instead).
    pub fn amqps_url(&self) -> Option<String> {
        let (user, password) = self.first_user();
        self.tls_addr
            .map(|a| format!("amqps://{user}:{password}@{a}/%2f"))
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
        let (user, password) = self.first_user();
        format!("amqp://{user}:{password}@{}/%2f", self.local_addr)
    }

    fn first_user(&self) -> (&str, &str) {
        self.config
            .users
            .first()
            .map(|u| (u.name.as_str(), u.password.as_str()))
            .unwrap_or(("guest", "guest"))
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
        self.access.memory.used_bytes()
    }

    /// Number of queues in the default vhost (for tests and metrics).
    pub fn queue_count(&self) -> usize {
        self.access
            .vhost(DEFAULT_VHOST)
            .map_or(0, |v| v.queue_count())
    }

    /// Stops accepting, closes every connection (320 CONNECTION_FORCED) and waits for them to end.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.signal.send_replace(Signal::Shutdown);
        for task in [self.task.take(), self.tls_task.take()]
            .into_iter()
            .flatten()
        {
            // The accept loop waits for its connections; a panic there is a bug, not a user error.
            if let Err(e) = task.await {
                tracing::error!("accept loop failed: {e}");
            }
        }
        // Syncs what is pending and stops every vhost's writer thread.
        let access = self.access.clone();
        let _ = tokio::task::spawn_blocking(move || access.close()).await;
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal.send_replace(Signal::Shutdown);
    }
}

/// The accept loop: one task per connection, bounded by a semaphore.
#[derive(Clone)]
struct Server {
    config: Arc<Config>,
    access: Arc<Access>,
    registry: Arc<Registry>,
    signal: watch::Receiver<Signal>,
    /// Connection slots ([`Config::max_connections`]), shared by the plain and TLS listeners.
    slots: Arc<Semaphore>,
}

impl Server {
    /// Accepts on `listener` until shutdown; with `tls`, each client does a TLS handshake first.
    async fn run(mut self, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let slots = self.slots.clone();
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.signal.wait_for(|s| *s == Signal::Shutdown) => break,
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // The slot is taken after accepting, not before: a listener waiting for clients must
            // hold none, since the plain and TLS listeners share them. A client past the limit is
            // held here, unanswered, until a connection closes.
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = self.signal.wait_for(|s| *s == Signal::Shutdown) => break,
            };
            let ctx = connection::Context {
                config: self.config.clone(),
                access: self.access.clone(),
                registry: self.registry.clone(),
                signal: self.signal.clone(),
            };
            let tls = tls.clone();
            connections.spawn(async move {
                match tls {
                    None => connection::serve(socket, peer, ctx).await,
                    Some(acceptor) => tls::serve(acceptor, socket, peer, ctx).await,
                }
                drop(permit);
            });
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
