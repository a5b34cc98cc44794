//! Spring-AMQP-style messaging for Rust, on `lapin` and `tokio`.
//!
//! - [`Connection`]: a connection that recovers by itself (reconnect with back-off, re-declare,
//!   re-subscribe).
//! - [`Template`]: `convert_and_send` with serde (JSON by default), publisher confirms, returns,
//!   `receive`, and request/reply over direct reply-to.
//! - [`Exchange`], [`Queue`], [`Binding`]: declarations, applied at start and after recovery.
//! - [`Listener`]: a listener container: prefetch, concurrency, ack by the handler's result,
//!   graceful shutdown.
//! - [`Retry`]: retry with back-off through the broker, then `<queue>.dlq`; and
//!   [`Template::convert_and_send_delayed`] ([`DelayMechanism`]).
//! - [`Partitions`]: ordered partitions, each key's messages handled in order by a single active
//!   consumer while keys spread over several queues.
//!
//! With the `embedded-broker` feature (on by default) the bundled broker is at
//! [`broker`], for tests and zero-set-up development.
//!
//! - [`rabbit_listener`]: an `async fn` annotated with `#[rabbit_listener(queue = "...")]` is a
//!   listener that [`App`] declares, subscribes and acknowledges.

#![warn(missing_docs)]

mod app;
mod breaker;
mod connection;
mod converter;
mod declare;
mod delay;
mod error;
mod extract;
mod health;
pub mod idempotent;
mod listener;
mod message;
pub mod outbox;
mod partition;
mod rate;
pub mod retry;
mod template;
#[cfg(feature = "embedded-broker")]
pub mod testing;

#[cfg(feature = "embedded-broker")]
pub use amqp_broker as broker;

pub use amqp_macros::rabbit_listener;

pub use app::definition::ListenerDefinition;
pub use app::{App, RunningApp};
pub use breaker::CircuitBreaker;
pub use connection::{Connection, ConnectionFactory};
pub use converter::{JsonConverter, MessageConverter};
pub use declare::{Binding, Declarable, Declarables, Exchange, ExchangeType, Queue, text};
pub use delay::DelayMechanism;
pub use error::{Error, Result};
pub use extract::{Delivery, FromDelivery, HandlerFn, IntoOutcome, Outcome, State, StateMap};
pub use health::{Health, HealthCheck, ListenerHealth};
pub use listener::{
    AckMode, Acker, Disposition, ErrorDisposition, Listener, ListenerBuilder, ListenerError,
    ListenerHandle,
};
pub use message::{Message, Metadata, TYPE_ID_HEADER};
pub use partition::Partitions;
pub use rate::{ParseRateError, Rate};
pub use retry::Retry;
pub use template::Template;

/// Re-exports of the AMQP types that appear in this API.
pub mod types {
    pub use lapin::BasicProperties;
    pub use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
}

/// What `#[rabbit_listener]` expands to refers to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::app::definition::{ArgValue, ListenerDefinition};
    pub use crate::breaker::circuit_breaker;
    pub use crate::rate::rate;
    pub use crate::retry::retry;
    pub use futures::future::BoxFuture;
    pub use inventory;
}
