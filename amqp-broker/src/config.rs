//! Broker settings, shared by the embedding API and the binary's command line.

use std::net::{IpAddr, Ipv4Addr};

/// One user allowed to log in (PLAIN or AMQPLAIN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The password, compared in full.
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
    /// Users who may log in; guest/guest unless told otherwise.
    pub users: Vec<User>,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 5672,
            users: vec![User::new("guest", "guest")],
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
        }
    }
}

impl Config {
    /// Whether `name`/`password` is one of the configured users.
    pub(crate) fn authenticate(&self, name: &str, password: &str) -> bool {
        self.users
            .iter()
            .any(|u| u.name == name && u.password == password)
    }
}
