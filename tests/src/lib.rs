//! The end-to-end test harness.
//!
//! Every conformance test is written once, as an `async fn(TestBroker)`, and the [`conformance!`]
//! macro turns it into two `#[tokio::test]`s:
//!
//! - `NAME::bundled` starts the bundled broker in-process on port 0 and runs against it;
//! - `NAME::rabbitmq` runs against the RabbitMQ named by `AMQP_TEST_RABBITMQ_URL`. Without that
//!   variable it returns at once (printing that it was skipped); with it, a RabbitMQ that does not
//!   answer fails the test. CI sets it, so there a missing RabbitMQ is a failure.
//!
//! Passing on both is how we know a test encodes RabbitMQ's behaviour and not our guess.
//! Names in tests must be unique per run ([`unique`]) so that parallel tests can share a RabbitMQ.

pub mod process;
pub mod proxy;
pub mod raw;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amqp_broker::Broker;
use lapin::{Connection, ConnectionProperties};

/// The environment variable that points the RabbitMQ leg at a server.
pub const RABBITMQ_URL_VAR: &str = "AMQP_TEST_RABBITMQ_URL";

/// Which server a test is talking to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The bundled broker, started in-process for this test.
    Bundled,
    /// The RabbitMQ named by [`RABBITMQ_URL_VAR`].
    RabbitMq,
}

/// A broker for one test: the bundled one (owned, shut down on drop) or the shared RabbitMQ.
#[derive(Debug)]
pub struct TestBroker {
    backend: Backend,
    url: String,
    broker: Option<Broker>,
}

impl TestBroker {
    /// Starts the bundled broker on 127.0.0.1, port 0.
    pub async fn bundled() -> Self {
        Self::bundled_with(Broker::builder()).await
    }

    /// Starts the bundled broker from a builder (for tests of broker settings).
    pub async fn bundled_with(builder: amqp_broker::BrokerBuilder) -> Self {
        let broker = builder
            .port(0)
            .start()
            .await
            .expect("bundled broker starts");
        Self {
            backend: Backend::Bundled,
            url: broker.amqp_url(),
            broker: Some(broker),
        }
    }

    /// The RabbitMQ from [`RABBITMQ_URL_VAR`], or `None` when the variable is not set.
    /// Panics when it is set but nothing answers there: in CI that must fail, not skip.
    pub async fn rabbitmq() -> Option<Self> {
        let url = std::env::var(RABBITMQ_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty())?;
        let probe = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await;
        match probe {
            Ok(Ok(conn)) => {
                close_quietly(&conn, "probe").await;
            }
            Ok(Err(e)) => panic!("{RABBITMQ_URL_VAR}={url} is set but RabbitMQ refused: {e}"),
            Err(_) => panic!("{RABBITMQ_URL_VAR}={url} is set but RabbitMQ did not answer in 10 s"),
        }
        Some(Self {
            backend: Backend::RabbitMq,
            url,
            broker: None,
        })
    }

    /// Which server this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether this is the bundled broker (for the few checks only it can make).
    pub fn is_bundled(&self) -> bool {
        self.backend == Backend::Bundled
    }

    /// The AMQP URL to connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port` of the server, for raw-socket tests.
    pub fn addr(&self) -> String {
        let rest = self
            .url
            .split_once('@')
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let rest = rest.trim_start_matches("amqp://");
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    /// Closes, from the broker's side (320 CONNECTION_FORCED), every connection whose client named
    /// itself `name`: through the embedding API on the bundled broker, with `rabbitmqctl
    /// close_connection` on RabbitMQ (so that tests sharing that RabbitMQ are not disturbed).
    /// Returns how many were closed.
    pub async fn close_connections_named(&self, name: &str) -> usize {
        if let Some(broker) = &self.broker {
            return broker.close_connections_named(name);
        }
        let list = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "-q",
                "--no-table-headers",
            ])
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(
            list.status.success(),
            "rabbitmqctl list_connections: {list:?}"
        );
        let wanted = format!("{{\"connection_name\",\"{name}\"}}");
        let mut closed = 0;
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let Some((pid, props)) = line.split_once('\t') else {
                continue;
            };
            if !props.contains(&wanted) {
                continue;
            }
            let status = tokio::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by a test"])
                .output()
                .await
                .expect("rabbitmqctl runs");
            assert!(
                status.status.success(),
                "rabbitmqctl close_connection: {status:?}"
            );
            closed += 1;
        }
        closed
    }

    /// The URL with its host and port replaced by `addr` (to go through a [`proxy::Proxy`]).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        self.url.replacen(&self.addr(), &addr.to_string(), 1)
    }

    /// The bundled broker itself (`None` for RabbitMQ).
    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// A new lapin connection.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    /// Shuts the bundled broker down in order (a no-op for RabbitMQ).
    pub async fn shutdown(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await.expect("orderly shutdown");
        }
    }
}

/// Closes a test's own connection when the test is done with it, waiting at most 5 s for
/// `connection.close-ok`: a clean-up close whose answer never comes (lapin's close can wait for
/// good once its I/O loop has ended) must not hang the suite. The outcome is not asserted.
pub async fn close_quietly(conn: &lapin::Connection, reason: &str) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.close(200, reason.into()),
    )
    .await;
}

/// A name unique to this run and this call: `PREFIX.PID.N.NANOS`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}.{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Declares a conformance test that runs on the bundled broker and on RabbitMQ.
///
/// ```text
/// async fn direct_routing(b: TestBroker) { … }
/// tests::conformance!(direct_routing);
/// ```
#[macro_export]
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bundled() {
                let broker = $crate::TestBroker::bundled().await;
                super::$name(broker).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                match $crate::TestBroker::rabbitmq().await {
                    Some(broker) => super::$name(broker).await,
                    None => eprintln!(
                        "skipped: set {} to run this against RabbitMQ",
                        $crate::RABBITMQ_URL_VAR
                    ),
                }
            }
        }
    )+};
}

/// Declares, through amqp-core, a transient work queue with a dead-letter queue behind it (a
/// fanout dead-letter exchange bound to it), all named from `prefix`; returns (queue,
/// dead-letter queue).
pub async fn work_queue_with_dlq(conn: &amqp_core::Connection, prefix: &str) -> (String, String) {
    use amqp_core::{Binding, Exchange, Queue};
    let q = unique(prefix);
    let dlx = unique(&format!("{prefix}.dlx"));
    let dlq = unique(&format!("{prefix}.dlq"));
    conn.declare(vec![
        Exchange::fanout(&dlx)
            .durable(false)
            .auto_delete(true)
            .into(),
        Queue::transient(&dlq).auto_delete().into(),
        Binding::queue(&dlq).to(&dlx).into(),
        Queue::transient(&q).dead_letter_exchange(&dlx).into(),
    ])
    .await
    .expect("declare a work queue with a dead-letter queue");
    (q, dlq)
}
