//! The framework's error type. Every variant says what was being done and to what.

use std::time::Duration;

/// What can go wrong sending, receiving, declaring or connecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No broker could be reached within the configured time.
    #[error("broker unreachable at {addresses}: waited {waited:?}; last error: {last_error}")]
    Unreachable {
        /// The addresses that were tried, comma-separated (passwords hidden).
        addresses: String,
        /// How long the caller waited.
        waited: Duration,
        /// The last connection error seen.
        last_error: String,
    },
    /// The connection was closed by the application.
    #[error("the connection is closed")]
    Closed,
    /// The broker refused the message (`basic.nack`).
    #[error(
        "broker nacked the message published to exchange '{exchange}' with routing key '{routing_key}'"
    )]
    Nacked {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
    },
    /// A mandatory message matched no queue and came back (`basic.return`).
    #[error(
        "message returned as unroutable ({reply_code} {reply_text}): exchange '{exchange}', routing key '{routing_key}'"
    )]
    Returned {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
        /// The broker's reply code (312 NO_ROUTE).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The broker did not confirm a publish in time.
    #[error(
        "no publisher confirm within {timeout:?} for exchange '{exchange}', routing key '{routing_key}'"
    )]
    ConfirmTimeout {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The channel closed under a publish (for example 404: the exchange does not exist).
    #[error("publish to exchange '{exchange}' with routing key '{routing_key}' failed: {source}")]
    Publish {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
        /// What the client library reported.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The reply channel closed (the connection dropped) before the reply arrived.
    #[error(
        "the reply to the request sent to exchange '{exchange}' with routing key '{routing_key}' was lost: the reply channel closed"
    )]
    ReplyLost {
        /// The exchange the request went to.
        exchange: String,
        /// The request's routing key.
        routing_key: String,
    },
    /// No reply arrived in time for a request.
    #[error(
        "no reply within {timeout:?} to the request sent to exchange '{exchange}' with routing key '{routing_key}'"
    )]
    ReplyTimeout {
        /// The exchange the request went to.
        exchange: String,
        /// The request's routing key.
        routing_key: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// A declaration conflicts with what exists on the broker (406 inequivalent arg).
    #[error("{kind} '{name}' conflicts with the one on the broker: {detail}")]
    DeclarationConflict {
        /// `exchange`, `queue` or `binding`.
        kind: &'static str,
        /// The name declared.
        name: String,
        /// The broker's explanation (names the differing property and both values).
        detail: String,
    },
    /// A declaration was refused for another reason.
    #[error("declaring {kind} '{name}' failed: {source}")]
    Declaration {
        /// `exchange`, `queue` or `binding`.
        kind: &'static str,
        /// The name declared.
        name: String,
        /// What the client library reported.
        #[source]
        source: Box<lapin::Error>,
    },
    /// A payload could not be serialized.
    #[error("cannot serialize {type_name}: {source}")]
    Serialize {
        /// The Rust type being sent.
        type_name: &'static str,
        /// The converter's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A payload could not be deserialized.
    #[error("cannot deserialize {type_name} (content type {content_type:?}): {source}")]
    Deserialize {
        /// The Rust type expected.
        type_name: &'static str,
        /// The message's content type.
        content_type: Option<String>,
        /// The converter's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The application's setup is wrong (two listeners with one id, an unknown listener name).
    #[error("configuration: {0}")]
    Configuration(String),
    /// A store outside the broker failed: Redis for idempotency records, the database of a
    /// transactional outbox.
    #[error("{store} failed: {source}")]
    Store {
        /// Which store (`redis`, `sqlite outbox`, `postgres outbox`).
        store: &'static str,
        /// What its client reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other AMQP failure.
    #[error("AMQP error: {0}")]
    Amqp(Box<lapin::Error>),
    /// The embedded broker could not start.
    #[cfg(feature = "embedded-broker")]
    #[error("embedded broker: {0}")]
    EmbeddedBroker(#[from] amqp_broker::Error),
}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Self::Amqp(Box::new(e))
    }
}

/// `Result` with the framework's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a lapin error means the connection (or its channel) went away, as opposed to the
/// broker refusing something: such a failure is worth retrying on the next connection.
pub(crate) fn is_connection_loss(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_)
        | K::InvalidConnectionState(_)
        | K::InvalidChannelState(..)
        | K::MissingHeartbeatError
        | K::RuntimeShutdownError(_) => true,
        // CONNECTION_FORCED: closed by an operator or a broker shutting down.
        K::ProtocolError(p) => p.get_id() == 320,
        _ => false,
    }
}

/// The AMQP reply code inside a lapin error, if the broker sent one.
pub(crate) fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}
