//! A connection that heals itself: [`Connection`] keeps one `lapin` connection up, and when it
//! drops, reconnects with capped exponential back-off, re-declares everything declared through
//! it, and tells its users (templates, listener containers) so they re-open their channels.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::{ConnectionProperties, Event};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::declare::{Declarable, Declarables};
use crate::delay::{DelayMechanism, Delays};
use crate::error::{Error, Result};

/// How long [`Connection::close`] waits for the broker's `close-ok`. lapin (4.12) can lose it
/// when a channel's `close-ok` is still being processed as the connection closes (it then logs
/// "invalid channel") and its close never returns, although the broker has closed the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How to reach the broker and how to recover.
#[derive(Clone, Debug)]
pub struct ConnectionFactory {
    addresses: Vec<String>,
    name: String,
    heartbeat_secs: u16,
    initial_backoff: Duration,
    max_backoff: Duration,
    unreachable_after: Duration,
    /// How delayed sends and retries wait in the broker.
    delay_mechanism: DelayMechanism,
    /// CA certificates (PEM) trusted for `amqps://` besides Mozilla's root CAs: what a
    /// broker with a private or self-signed certificate needs.
    tls_ca_pem: Option<String>,
}

impl ConnectionFactory {
    /// A factory for one URL, `amqp://user:password@host:port/vhost`.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_addresses([url])
    }

    /// A factory that tries several URLs in turn, a RabbitMQ cluster's nodes: the first that
    /// answers is used, at the first connection and again at every reconnection (each starts
    /// with the first URL), so losing a node moves the connection to another one.
    pub fn with_addresses<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            addresses: urls.into_iter().map(Into::into).collect(),
            name: "amqp-core".into(),
            heartbeat_secs: 30,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            unreachable_after: Duration::from_secs(10),
            delay_mechanism: DelayMechanism::Auto,
            tls_ca_pem: None,
        }
    }

    /// The connection name shown by the broker (RabbitMQ's management UI, `connection_name`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The heartbeat interval asked of the broker, in seconds (0: none).
    pub fn heartbeat_secs(mut self, secs: u16) -> Self {
        self.heartbeat_secs = secs;
        self
    }

    /// Back-off between reconnection attempts: starts at `initial`, doubles, stops growing at
    /// `max`.
    pub fn recovery_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// How long connecting, and any operation during an outage, waits for the broker before
    /// failing with [`Error::Unreachable`].
    pub fn unreachable_after(mut self, wait: Duration) -> Self {
        self.unreachable_after = wait;
        self
    }

    /// How delayed sends and listener retries wait in the broker (default
    /// [`DelayMechanism::Auto`]: detected once per connection).
    pub fn delay_mechanism(mut self, mechanism: DelayMechanism) -> Self {
        self.delay_mechanism = mechanism;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks) for `amqps://`
    /// URLs, besides Mozilla's root CAs (built in): for a broker whose certificate a private or
    /// self-signed CA issued. Checked by [`connect`](Self::connect): PEM without a certificate
    /// is [`Error::Configuration`].
    pub fn tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// [`tls_ca_pem`](Self::tls_ca_pem) read from a file (what `AMQP_TLS_CA_FILE` names for
    /// [`crate::App`]); a file that cannot be read or holds no certificate is
    /// [`Error::Configuration`] naming it.
    pub fn tls_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read_to_string(path).map_err(|e| {
            Error::Configuration(format!(
                "cannot read the TLS CA file {}: {e}",
                path.display()
            ))
        })?;
        check_ca_pem(&pem)
            .map_err(|e| Error::Configuration(format!("TLS CA file {}: {e}", path.display())))?;
        Ok(self.tls_ca_pem(pem))
    }

    /// Connects, waiting up to [`unreachable_after`](Self::unreachable_after) for the first
    /// connection; from then on the connection recovers by itself until [`Connection::close`].
    pub async fn connect(self) -> Result<Connection> {
        if let Some(pem) = &self.tls_ca_pem {
            check_ca_pem(pem).map_err(|e| Error::Configuration(format!("TLS CA: {e}")))?;
        }
        let (state, _) = watch::channel(Link::Connecting);
        let shared = Arc::new(Shared {
            state,
            declarations: Mutex::new(Vec::new()),
            last_error: Mutex::new("not connected yet".into()),
            delays: Delays::new(self.delay_mechanism),
            factory: self,
        });
        let conn = Connection {
            shared: shared.clone(),
        };
        tokio::spawn(supervise(shared));
        conn.link(conn.shared.factory.unreachable_after).await?;
        Ok(conn)
    }

    /// The URLs with their passwords hidden, for messages.
    pub(crate) fn display_addresses(&self) -> String {
        self.addresses
            .iter()
            .map(|a| hide_password(a))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The URL for an attempt, with the heartbeat as lapin expects it.
    fn url(&self, address: &str) -> String {
        let sep = if address.contains('?') { '&' } else { '?' };
        format!("{address}{sep}heartbeat={}", self.heartbeat_secs)
    }
}

/// A self-healing connection. Cheap to clone: clones share one underlying connection.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
/// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
/// # let url = broker.amqp_url();
/// use amqp_core::{Connection, Queue};
///
/// let conn = Connection::connect(&url).await?;
/// conn.declare(Queue::durable("orders")).await?;
/// conn.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Connection {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    factory: ConnectionFactory,
    /// The current link; watchers learn of every reconnection through it.
    state: watch::Sender<Link>,
    /// Everything declared through this connection, re-declared after each reconnection.
    declarations: Mutex<Vec<Declarable>>,
    /// The last connection error, for [`Error::Unreachable`].
    last_error: Mutex<String>,
    /// The delay mechanism once known, and the delay routes declared.
    delays: Delays,
}

/// The state of the underlying connection.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// Connecting or reconnecting.
    Connecting,
    /// Up. `generation` counts successful (re)connections, so users can tell a new one.
    Up {
        conn: Arc<lapin::Connection>,
        generation: u64,
    },
    /// Closed by the application.
    Closed,
}

impl Connection {
    /// Connects to one URL with default settings (see [`ConnectionFactory`] for more).
    pub async fn connect(url: &str) -> Result<Self> {
        ConnectionFactory::new(url).connect().await
    }

    /// The settings this connection was made with.
    pub fn factory(&self) -> &ConnectionFactory {
        &self.shared.factory
    }

    /// Waits (up to `wait`) for the connection to be up; returns it and its generation.
    pub(crate) async fn link(&self, wait: Duration) -> Result<(Arc<lapin::Connection>, u64)> {
        let mut rx = self.shared.state.subscribe();
        let deadline = Instant::now() + wait;
        loop {
            match &*rx.borrow_and_update() {
                Link::Up { conn, generation } if conn.status().connected() => {
                    return Ok((conn.clone(), *generation));
                }
                Link::Closed => return Err(Error::Closed),
                _ => {}
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(self.unreachable(wait));
            }
        }
    }

    /// Waits for a connection whose generation is newer than `seen` (or any, for 0), with no
    /// deadline: listeners wait out outages of any length. `None` once closed.
    pub(crate) async fn next_link(&self, seen: u64) -> Option<(Arc<lapin::Connection>, u64)> {
        let mut rx = self.shared.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Link::Up { conn, generation }
                    if *generation > seen && conn.status().connected() =>
                {
                    return Some((conn.clone(), *generation));
                }
                Link::Closed => return None,
                _ => {}
            }
            rx.changed().await.ok()?;
        }
    }

    /// A new channel on the current connection, waiting out an outage up to the factory's
    /// `unreachable_after`. Returns the connection generation it belongs to.
    pub(crate) async fn channel(&self) -> Result<(lapin::Channel, u64)> {
        self.channel_by(Instant::now() + self.unreachable_wait())
            .await
    }

    /// [`channel`](Self::channel) with a deadline of the caller's.
    pub(crate) async fn channel_by(&self, deadline: Instant) -> Result<(lapin::Channel, u64)> {
        let wait = self.unreachable_wait();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (conn, generation) = self.link(left).await?;
            match conn.create_channel().await {
                Ok(ch) => return Ok((ch, generation)),
                Err(e) if conn.status().connected() => return Err(e.into()),
                Err(_) => {
                    // Dropped between the check and the open: wait for the next connection.
                    if Instant::now() >= deadline {
                        return Err(self.unreachable(wait));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The delay mechanism this connection uses for delayed sends and listener retries: as
    /// configured, or (for [`DelayMechanism::Auto`]) detected on first use, once.
    pub async fn delay_mechanism(&self) -> Result<DelayMechanism> {
        self.shared.delays.mechanism(self).await
    }

    pub(crate) fn delays(&self) -> &Delays {
        &self.shared.delays
    }

    /// The generation of the connection that is up now, if one is.
    pub(crate) fn generation(&self) -> Option<u64> {
        match &*self.shared.state.borrow() {
            Link::Up { conn, generation } if conn.status().connected() => Some(*generation),
            _ => None,
        }
    }

    /// Whether the underlying connection is up right now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared.state.borrow(), Link::Up { conn, .. } if conn.status().connected())
    }

    /// Declares exchanges, queues and bindings now, and again after every reconnection.
    ///
    /// A declaration that conflicts with what the broker has fails with
    /// [`Error::DeclarationConflict`], naming the resource and the differing property; nothing
    /// after it is declared, and it is not remembered.
    pub async fn declare(&self, items: impl Into<Declarables>) -> Result<()> {
        let items = items.into().0;
        let (ch, _) = self.channel().await?;
        let result = crate::declare::declare_all(&ch, &items).await;
        if ch.status().connected() {
            let _ = ch.close(200, "declared".into()).await;
        }
        result?;
        let mut remembered = self.shared.declarations.lock();
        for item in items {
            if !remembered.contains(&item) {
                remembered.push(item);
            }
        }
        Ok(())
    }

    /// Declares again everything declared through this connection (after a listener found its
    /// queue gone, for instance). Failures are logged, not returned: each item is tried.
    pub(crate) async fn redeclare(&self) {
        let declarations = self.shared.declarations.lock().clone();
        if declarations.is_empty() {
            return;
        }
        if let Ok((conn, _)) = self.link(Duration::ZERO).await {
            if let Err(e) = declare_each(&conn, &declarations).await {
                tracing::warn!("re-declaring failed: {e}");
            }
        }
    }

    /// Closes the connection for good: recovery stops, users see [`Error::Closed`].
    pub async fn close(&self) {
        let previous = self.shared.state.send_replace(Link::Closed);
        if let Link::Up { conn, .. } = previous {
            let closing = conn.close(200, "closed by the application".into());
            if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
                tracing::debug!("no connection.close-ok within {CLOSE_WAIT:?}; not waiting longer");
            }
        }
    }

    /// How long operations wait out an outage.
    pub(crate) fn unreachable_wait(&self) -> Duration {
        self.shared.factory.unreachable_after
    }

    /// The error for an outage that outlasted the wait.
    pub(crate) fn unreachable(&self, waited: Duration) -> Error {
        Error::Unreachable {
            addresses: self.shared.factory.display_addresses(),
            waited,
            last_error: self.shared.last_error.lock().clone(),
        }
    }
}

/// Keeps the connection up until it is closed.
async fn supervise(shared: Arc<Shared>) {
    let factory = &shared.factory;
    let mut generation = 0;
    let mut backoff = factory.initial_backoff;
    loop {
        if matches!(*shared.state.borrow(), Link::Closed) {
            return;
        }
        let conn = match connect_any(factory).await {
            Ok(conn) => Arc::new(conn),
            Err(e) => {
                tracing::warn!(addresses = %factory.display_addresses(), "connection failed, retrying in {backoff:?}: {e}");
                *shared.last_error.lock() = e;
                if wait_or_closed(&shared, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(factory.max_backoff);
                continue;
            }
        };
        let declarations = shared.declarations.lock().clone();
        if let Err(e) = declare_each(&conn, &declarations).await {
            *shared.last_error.lock() = e.to_string();
            continue;
        }
        generation += 1;
        backoff = factory.initial_backoff;
        if generation > 1 {
            tracing::info!(generation, "connection recovered");
        }
        let mut events = conn.events_listener();
        let up = Link::Up {
            conn: conn.clone(),
            generation,
        };
        // A close() racing with us wins: never overwrite Closed.
        let published = shared.state.send_if_modified(|s| {
            if matches!(s, Link::Closed) {
                return false;
            }
            *s = up.clone();
            true
        });
        if !published {
            let _ = conn.close(200, "closed by the application".into()).await;
            return;
        }
        // Wait until it drops (an error event, or the status says so) or we are closed.
        let mut rx = shared.state.subscribe();
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Event::Error(e)) if !conn.status().connected() => {
                        *shared.last_error.lock() = e.to_string();
                        break;
                    }
                    None => break,
                    _ => {}
                },
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if !conn.status().connected() {
                        break;
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() || matches!(*rx.borrow(), Link::Closed) {
                        return;
                    }
                }
            }
        }
        tracing::warn!(generation, "connection lost; reconnecting");
        shared.state.send_if_modified(|s| {
            if matches!(s, Link::Closed) {
                return false;
            }
            *s = Link::Connecting;
            true
        });
    }
}

/// Declares each item on its own (a failure closes only the channel it happened on, so the rest
/// go on a new one); failures are logged. Errors only if no channel can be opened.
async fn declare_each(conn: &lapin::Connection, items: &[Declarable]) -> lapin::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut ch = conn.create_channel().await?;
    for item in items {
        if let Err(e) = crate::declare::declare_all(&ch, std::slice::from_ref(item)).await {
            tracing::error!("re-declaring after reconnection failed: {e}");
            ch = conn.create_channel().await?;
        }
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// Sleeps for `d` unless the connection is closed first (returns true then).
async fn wait_or_closed(shared: &Shared, d: Duration) -> bool {
    let mut rx = shared.state.subscribe();
    let closed = async {
        loop {
            if matches!(*rx.borrow_and_update(), Link::Closed) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = closed => true,
    }
}

/// Whether `pem` holds at least one certificate and nothing malformed (lapin would skip what it
/// cannot parse, and the connection would then fail with a less telling certificate error).
fn check_ca_pem(pem: &str) -> std::result::Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(())
}

/// Tries each address in turn; the error of the last one if none answers.
pub(crate) async fn connect_any(
    factory: &ConnectionFactory,
) -> std::result::Result<lapin::Connection, String> {
    let mut last = String::from("no addresses configured");
    for address in &factory.addresses {
        let props =
            ConnectionProperties::default().with_connection_name(factory.name.clone().into());
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: factory.tls_ca_pem.clone(),
        };
        let connect = async {
            lapin::DefaultConnectionBuilder::new()?
                .with_uri_str(factory.url(address))
                .with_properties(props)
                .with_tls_config(tls)
                .connect()
                .await
        };
        let attempt = tokio::time::timeout(Duration::from_secs(10), connect).await;
        match attempt {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = format!("{}: {e}", hide_password(address)),
            Err(_) => last = format!("{}: no answer within 10 s", hide_password(address)),
        }
    }
    Err(last)
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`.
pub(crate) fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_ca_pem, hide_password};

    #[test]
    fn a_tls_ca_without_a_certificate_is_refused() {
        assert_eq!(
            check_ca_pem("not pem at all"),
            Err("no CERTIFICATE block found".into())
        );
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            check_ca_pem(key_only),
            Err("no CERTIFICATE block found".into())
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(
            check_ca_pem(broken)
                .unwrap_err()
                .starts_with("not valid PEM")
        );
    }

    #[test]
    fn passwords_are_hidden_in_messages() {
        assert_eq!(hide_password("amqp://u:p@h:1/%2f"), "amqp://u:***@h:1/%2f");
        assert_eq!(hide_password("amqp://h:1/"), "amqp://h:1/");
    }
}
