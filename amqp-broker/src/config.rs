//! Broker settings, shared by the embedding API and the binary's command line.

use std::net::{IpAddr, Ipv4Addr};

/// A user created at start: an administrator with full permissions on the vhost `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The password (the broker keeps only its salted hash).
    pub password: String,
}

impl User {
    /// A user from its name and password.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
        }
    }
}

/// The PEM files of the amqps listener's identity (see [`Config::tls`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first (PEM, one or more `CERTIFICATE` blocks).
    pub cert_chain_path: std::path::PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_path: std::path::PathBuf,
}

/// RabbitMQ's amqps port, the default of [`Config::tls_port`].
pub const DEFAULT_TLS_PORT: u16 = 5671;

/// The default of [`Config::queue_memory_budget_bytes`]: a queue of 1 KiB messages keeps about
/// 10,000 of them in memory, enough readahead for fast consumers; two million more cost 48 MiB
/// of index.
pub const DEFAULT_QUEUE_MEMORY_BUDGET_BYTES: u64 = 16 * 1024 * 1024;

/// Everything the broker needs to know before it starts.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the AMQP listener binds to.
    pub bind: IpAddr,
    /// AMQP port; 0 lets the OS pick one (see [`crate::Broker::port`]).
    pub port: u16,
    /// Users created at start as administrators with full permissions on the vhost `/` (as
    /// RabbitMQ's default user); guest/guest unless told otherwise. More users, vhosts and
    /// permissions come from [`Config::definitions_file`] or the management API.
    pub users: Vec<User>,
    /// Users who may connect from loopback addresses only, as RabbitMQ's `loopback_users`
    /// (default: `guest`); from elsewhere their login is refused as a wrong password is.
    pub loopback_users: Vec<String>,
    /// A RabbitMQ definitions file (JSON, as `rabbitmqctl export_definitions` writes) imported
    /// at every start, after the configured users: RabbitMQ's `load_definitions`.
    pub definitions_file: Option<std::path::PathBuf>,
    /// Largest frame the broker accepts and offers in `connection.tune` (bytes, header included).
    pub frame_max_bytes: u32,
    /// Most channels per connection offered in `connection.tune`.
    pub channel_max: u16,
    /// Heartbeat interval the broker proposes; the client may lower it (0 turns heartbeats off).
    pub heartbeat_secs: u16,
    /// Largest message body accepted; bigger publishes are refused before their body is buffered.
    pub max_message_bytes: u64,
    /// Most connections served at once. Like RabbitMQ's `connection_max` (a limit on its TCP
    /// acceptor), further clients are not refused: they are accepted only when a slot frees, so
    /// they wait for `connection.start` (or give up on their own connect timeout).
    pub max_connections: usize,
    /// Most consumers one channel may hold; `None` is no limit (RabbitMQ's default). One more
    /// `basic.consume` closes the connection with 530 NOT_ALLOWED, as RabbitMQ's
    /// `consumer_max_per_channel` (3.12 and later) does.
    pub max_consumers_per_channel: Option<usize>,
    /// Where durable definitions and persistent messages are kept; `None` keeps everything in
    /// memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// Size at which a queue's log segment is closed and a new one started (settled segments
    /// are deleted whole).
    pub segment_bytes: u64,
    /// Flow control: once the message bodies the broker holds reach this many bytes, connections
    /// that publish are blocked (no longer read; `connection.blocked` sent to clients that ask
    /// for it) until consumers bring it below 90% of it. Default: 40% of the machine's memory.
    pub memory_high_watermark_bytes: u64,
    /// Memory each durable queue may use for the messages it holds (bodies plus a fixed
    /// estimate per message); persistent messages beyond it live in the queue's log only and are
    /// read back in batches when consumers reach them. Transient messages are never paged out.
    pub queue_memory_budget_bytes: u64,
    /// Most body bytes of ready messages any one queue holds, for every queue: RabbitMQ's
    /// answer to "queued bytes in memory" is an operator policy `max-length-bytes` (the lower of
    /// it and a queue's own `x-max-length-bytes` applies), which this is. Past it the queue's
    /// `x-overflow` decides: drop-head (the default) drops or dead-letters the oldest message,
    /// reject-publish answers the publisher with `basic.nack`. `None` (the default): no limit
    /// beyond the queue's own arguments.
    pub queue_max_length_bytes: Option<u64>,
    /// Port of the management HTTP API (see the `management` module); `None` serves none, 0
    /// picks a free port (read it back with [`crate::Broker::management_port`]). It listens on
    /// [`Config::bind`], like the AMQP port.
    pub management_port: Option<u16>,
    /// Serves AMQP over TLS (amqps) on [`Config::tls_port`] as well, with this certificate and
    /// key; `None` serves plain AMQP only. Both listeners share [`Config::max_connections`].
    pub tls: Option<TlsFiles>,
    /// The amqps port (RabbitMQ's is 5671); 0 picks a free one (read it back with
    /// [`crate::Broker::tls_port`]). Used only with [`Config::tls`]; listens on [`Config::bind`].
    pub tls_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 5672,
            users: vec![User::new("guest", "guest")],
            loopback_users: vec!["guest".to_owned()],
            definitions_file: None,
            frame_max_bytes: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            max_message_bytes: 128 * 1024 * 1024,
            max_connections: 10_000,
            max_consumers_per_channel: None,
            data_dir: None,
            segment_bytes: 16 * 1024 * 1024,
            memory_high_watermark_bytes: crate::memory::default_high_watermark_bytes(),
            queue_memory_budget_bytes: DEFAULT_QUEUE_MEMORY_BUDGET_BYTES,
            queue_max_length_bytes: None,
            management_port: None,
            tls: None,
            tls_port: DEFAULT_TLS_PORT,
        }
    }
}
