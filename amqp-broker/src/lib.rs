//! A lightweight AMQP 0-9-1 broker that unmodified clients (lapin, pika, amqplib) use exactly as they
//! use RabbitMQ: the same routing, the same acknowledgement semantics, the same error codes.
//!
//! Embed it in a test or an application:
//!
//! ```no_run
//! # async fn demo() -> Result<(), amqp_broker::Error> {
//! let broker = amqp_broker::Broker::builder().port(0).start().await?;
//! let url = broker.amqp_url(); // "amqp://guest:guest@127.0.0.1:PORT/%2f"
//! # let _ = url;
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! With `.data_dir(dir)` (the binary's `--data-dir DIR`) durable exchanges, queues and bindings
//! and persistent messages in durable queues are kept on disk and recovered at the next start
//! on the same directory; a publisher confirm (or `tx.commit-ok`) for such a message is sent only
//! after it is synced. Without it everything lives in memory only. Persistent messages waiting in
//! a durable `x-delayed-message` exchange are stored the same way. Only one broker at a time may
//! use a data directory ([`Error::DataDirLocked`] names the process holding it).
//!
//! TLS: with [`BrokerBuilder::tls`] (the binary's `--tls-cert FILE --tls-key FILE`) the broker
//! also serves amqps on [`BrokerBuilder::tls_port`] (5671 by default, as RabbitMQ), with the
//! certificate chain and key read from PEM files at start.
//!
//! Users, virtual hosts and permissions work as RabbitMQ's: guest/guest (from loopback only,
//! see [`BrokerBuilder::loopback_users`]) or the users given to [`BrokerBuilder::user`] are
//! administrators of the vhost `/`; more come from a RabbitMQ definitions file
//! ([`BrokerBuilder::definitions_file`]) or the management API, with passwords hashed as
//! RabbitMQ hashes them and configure/write/read permissions checked on every operation.
//!
//! Flow control: once the message bodies the broker holds reach
//! [`BrokerBuilder::memory_high_watermark_bytes`], connections that publish are blocked
//! (`connection.blocked`, and their socket is not read) until consumers drain the queues.
//!
//! Data flows one way: socket → frame codec → connection task → channel state → exchange routing →
//! queue → consumer delivery → socket. See `DESIGN.md` in the repository for the whole picture.

#![warn(missing_docs)]

mod access;
mod broker;
mod channel;
mod codec;
mod config;
mod connection;
mod dead_letter;
mod delayed;
mod error;
mod exchange;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod id_hash;
mod management;
mod memory;
mod message;
mod metrics;
mod queue;
mod registry;
mod store;
mod tls;
mod vhost;

pub use broker::{Broker, BrokerBuilder};
pub use config::{Config, DEFAULT_QUEUE_MEMORY_BUDGET_BYTES, DEFAULT_TLS_PORT, TlsFiles, User};
pub use error::Error;
// For the binary's `ctl`, which requests paths of the management API.
#[doc(hidden)]
pub use management::encode_path_segment;
pub use registry::ConnectionInfo;
