//! What one load run does: the PerfTest-style settings, as command-line flags.

use clap::{Args, ValueEnum};

/// The default broker: a local RabbitMQ (or the bundled broker on its default port).
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The AMQP client producers and consumers use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Client {
    /// `lapin`, a general-purpose client (an I/O thread per connection, a promise per publish):
    /// it needs several times the broker's CPU per message, so it bounds the rates.
    Lapin,
    /// The tool's own AMQP 0-9-1 code: one task per connection, batched writes, multi-acks per
    /// read (see `raw`); a small fraction of the broker's CPU per message.
    #[default]
    Raw,
}

/// One run: producers publish to one queue through the default exchange, consumers drain it.
#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// The broker's AMQP URI.
    #[arg(long, default_value = DEFAULT_URI)]
    pub uri: String,
    /// Producers, each on its own connection and channel.
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,
    /// Consumers, each on its own connection and channel.
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Body size in bytes; at least 8, the send-time stamp latency is computed from.
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// How long producers publish (and consumers consume), in seconds.
    #[arg(short = 'z', long = "duration-secs", default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Publisher confirms with at most this many unconfirmed messages per producer (0: no confirms).
    #[arg(short = 'c', long = "confirm", default_value_t = 0)]
    pub confirm_window: usize,
    /// Publish with delivery mode 2 (persistent).
    #[arg(long)]
    pub persistent: bool,
    /// Declare the queue durable.
    #[arg(long)]
    pub durable: bool,
    /// Unacknowledged deliveries each consumer may hold (basic.qos; 0: unlimited).
    #[arg(short = 'q', long, default_value_t = 0)]
    pub prefetch: u16,
    /// Acknowledge with `multiple` every N deliveries (0 or 1: one ack per delivery).
    #[arg(short = 'A', long = "multi-ack-every", default_value_t = 0)]
    pub multi_ack_every: u64,
    /// Consume with no-ack (the broker forgets a message once sent).
    #[arg(short = 'a', long)]
    pub auto_ack: bool,
    /// Messages per second per producer (unlimited when absent).
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// The queue; a generated name when absent. A generated queue is deleted at the end, a named
    /// one is left as it is (so a later run can consume what this one published).
    #[arg(short = 'u', long)]
    pub queue: Option<String>,
    /// Stop once the consumers together have received this many messages (the duration still
    /// bounds the run).
    #[arg(long = "consume-count")]
    pub consume_count: Option<u64>,
    /// Connections to open (one channel each) and hold idle during the run.
    #[arg(long = "idle-connections", default_value_t = 0)]
    pub idle_connections: usize,
    /// The client producers and consumers use (queue setup and idle connections use lapin).
    #[arg(long, value_enum, default_value_t = Client::Raw)]
    pub client: Client,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No per-second progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            uri: DEFAULT_URI.to_owned(),
            producers: 1,
            consumers: 1,
            size: 16,
            duration_secs: 10.0,
            confirm_window: 0,
            persistent: false,
            durable: false,
            prefetch: 0,
            multi_ack_every: 0,
            auto_ack: false,
            rate: None,
            queue: None,
            consume_count: None,
            idle_connections: 0,
            client: Client::Raw,
            json: false,
            quiet: false,
        }
    }
}

impl RunOptions {
    /// Rejects settings that cannot run, with what to write instead.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.size < crate::clock::STAMP_BYTES {
            anyhow::bail!(
                "--size {} is too small: a body carries an {}-byte send time, so use at least {}",
                self.size,
                crate::clock::STAMP_BYTES,
                crate::clock::STAMP_BYTES
            );
        }
        if !(self.duration_secs.is_finite() && self.duration_secs > 0.0) {
            anyhow::bail!("--duration-secs must be a positive number of seconds");
        }
        if self
            .rate
            .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
        {
            anyhow::bail!("--rate must be a positive number of messages per second");
        }
        if self.producers == 0 && self.consumers == 0 && self.idle_connections == 0 {
            anyhow::bail!("nothing to do: no producers, no consumers, no idle connections");
        }
        if self.auto_ack && self.multi_ack_every > 1 {
            anyhow::bail!("--multi-ack-every has no meaning with --auto-ack (nothing is acked)");
        }
        Ok(())
    }

    /// A one-line description for the report's heading.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} producer(s), {} consumer(s), {} B",
            self.producers, self.consumers, self.size
        );
        if self.confirm_window > 0 {
            s += &format!(", confirms (window {})", self.confirm_window);
        }
        if self.persistent {
            s += ", persistent";
        }
        if self.durable {
            s += ", durable queue";
        }
        if self.auto_ack {
            s += ", auto-ack";
        } else if self.multi_ack_every > 1 {
            s += &format!(", multi-ack every {}", self.multi_ack_every);
        }
        if self.prefetch > 0 {
            s += &format!(", prefetch {}", self.prefetch);
        }
        if let Some(rate) = self.rate {
            s += &format!(", {rate} msg/s per producer");
        }
        if self.idle_connections > 0 {
            s += &format!(", {} idle connections", self.idle_connections);
        }
        s += match self.client {
            Client::Raw => ", raw client",
            Client::Lapin => ", lapin client",
        };
        s
    }
}
