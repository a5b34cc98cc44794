//! A health check an application serves from its own HTTP endpoint: is the connection up, and
//! is every listener consuming? [`HealthCheck`] is cheap to clone into a request handler; its
//! [`Health`] serializes to JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::connection::Connection;
use crate::listener::ListenerHandle;

/// The state of the connection and the listeners at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Connected, and every listener consuming.
    pub healthy: bool,
    /// The connection to the broker is up (false while it recovers).
    pub connected: bool,
    /// One entry per listener.
    pub listeners: Vec<ListenerHealth>,
}

/// One listener's part of [`Health`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerHealth {
    /// The listener's id ([`crate::ListenerBuilder::id`]; the function's path for
    /// `#[rabbit_listener]`s).
    pub id: String,
    /// The queue it consumes (the base name, for a partitioned listener).
    pub queue: String,
    /// Every consumer is subscribed.
    pub consuming: bool,
    /// Consumers subscribed now.
    pub consumers: usize,
    /// Consumers it runs when all is well (concurrency × partitions).
    pub expected_consumers: usize,
}

/// How many of a listener's consumers are subscribed; shared by its workers and health checks.
#[derive(Debug)]
pub(crate) struct ListenerStatus {
    id: String,
    queue: String,
    expected: usize,
    subscribed: AtomicUsize,
}

impl ListenerStatus {
    pub(crate) fn new(id: String, queue: String, expected: usize) -> Self {
        Self {
            id,
            queue,
            expected,
            subscribed: AtomicUsize::new(0),
        }
    }

    /// Counts one consumer as subscribed until the returned guard is dropped.
    pub(crate) fn subscribed(&self) -> Subscribed<'_> {
        self.subscribed.fetch_add(1, Ordering::Relaxed);
        Subscribed(&self.subscribed)
    }

    pub(crate) fn health(&self) -> ListenerHealth {
        let consumers = self.subscribed.load(Ordering::Relaxed);
        ListenerHealth {
            id: self.id.clone(),
            queue: self.queue.clone(),
            consuming: consumers >= self.expected,
            consumers,
            expected_consumers: self.expected,
        }
    }
}

/// Takes a consumer off the subscribed count when dropped.
pub(crate) struct Subscribed<'a>(&'a AtomicUsize);

impl Drop for Subscribed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers [`Health`] for a connection and the listeners added to it. From an [`crate::App`]:
/// [`crate::RunningApp::health_check`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
/// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
/// use amqp_core::{Connection, HealthCheck, Listener, ListenerError, Queue};
///
/// let conn = Connection::connect(&broker.amqp_url()).await?;
/// conn.declare(Queue::transient("health.demo")).await?;
/// let listener = Listener::on("health.demo")
///     .handler(|_: serde_json::Value| async { Ok::<_, ListenerError>(()) })
///     .start(&conn)
///     .await?;
/// let check = HealthCheck::new(&conn).listener(&listener);
/// let health = check.health();
/// assert!(health.healthy && health.connected && health.listeners[0].consuming);
/// // serde_json::to_string(&health) is the body of a GET /health.
/// listener.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HealthCheck {
    conn: Connection,
    listeners: Vec<Arc<ListenerStatus>>,
}

impl HealthCheck {
    /// A check of `conn` alone; add listeners with [`listener`](Self::listener).
    pub fn new(conn: &Connection) -> Self {
        Self {
            conn: conn.clone(),
            listeners: Vec::new(),
        }
    }

    /// Also checks this listener.
    pub fn listener(mut self, handle: &ListenerHandle) -> Self {
        self.listeners.push(handle.status());
        self
    }

    /// The state now.
    pub fn health(&self) -> Health {
        let connected = self.conn.is_connected();
        let listeners: Vec<_> = self.listeners.iter().map(|l| l.health()).collect();
        Health {
            healthy: connected && listeners.iter().all(|l| l.consuming),
            connected,
            listeners,
        }
    }
}
