//! Listeners as `#[rabbit_listener]` registers them: plain static data and a function pointer,
//! collected with `inventory`, declared and started by [`crate::App`].

use lapin::types::{AMQPValue, LongString};

use crate::breaker::CircuitBreaker;
use crate::declare::{Binding, Declarable, Exchange, ExchangeType, Queue};
use crate::extract::{Delivery, Outcome};
use crate::listener::AckMode;
use crate::partition::Partitions;
use crate::rate::Rate;
use crate::retry::Retry;

/// An argument value in a listener's declaration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArgValue {
    /// A string (sent as an AMQP long string).
    Str(&'static str),
    /// An integer (sent as a signed 64-bit integer).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A number with a fraction (sent as an AMQP double).
    Float(f64),
}

impl ArgValue {
    fn to_amqp(self) -> AMQPValue {
        match self {
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s)),
            ArgValue::Int(n) => AMQPValue::LongLongInt(n),
            ArgValue::Bool(b) => AMQPValue::Boolean(b),
            ArgValue::Float(f) => AMQPValue::Double(f),
        }
    }
}

/// What `#[rabbit_listener]` registers for one handler.
#[derive(Debug)]
pub struct ListenerDefinition {
    /// Unique among an app's listeners (default: the function's path).
    pub id: &'static str,
    /// The queue consumed (declared if absent).
    pub queue: &'static str,
    /// The exchange the queue is bound to, if any.
    pub exchange: Option<&'static str>,
    /// The exchange's type: `direct`, `fanout`, `topic` or `headers`.
    pub exchange_type: &'static str,
    /// Binding keys (one binding each; none means one binding with the empty key).
    pub keys: &'static [&'static str],
    /// Queue durability (default true).
    pub durable: bool,
    /// Exclusive queue.
    pub exclusive: bool,
    /// Auto-delete queue.
    pub auto_delete: bool,
    /// Queue arguments (`x-dead-letter-exchange`, `x-message-ttl`, …).
    pub queue_arguments: &'static [(&'static str, ArgValue)],
    /// Binding arguments (headers exchanges: `x-match` and the headers to match).
    pub binding_arguments: &'static [(&'static str, ArgValue)],
    /// Prefetch per consumer (default: the app's).
    pub prefetch: Option<u16>,
    /// Consumers (default: the app's).
    pub concurrency: Option<usize>,
    /// Acknowledgement mode.
    pub ack: AckMode,
    /// Whether each `message_id` is handled once (through the app's idempotency store).
    pub idempotent: bool,
    /// At most this many messages per unit of time.
    pub rate: Option<Rate>,
    /// Stops consuming for a cool-down when too many deliveries fail.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Retry with back-off through the broker, then `<queue>.dlq`.
    pub retry: Option<Retry>,
    /// Ordered partitions: the queue is `<queue>.0` … `<queue>.N-1`, each single-active-consumer
    /// and bound with `<key>.<p>` (see [`crate::Partitions`]).
    pub partitions: Option<u16>,
    /// The generated handler.
    pub handler: fn(Delivery) -> futures::future::BoxFuture<'static, Outcome>,
    /// `file:line` of the `#[rabbit_listener]` attribute, for error messages.
    pub location: &'static str,
}

inventory::collect!(ListenerDefinition);

impl ListenerDefinition {
    /// Every listener registered in the program, sorted by id.
    pub fn all() -> Vec<&'static ListenerDefinition> {
        let mut all: Vec<_> = inventory::iter::<ListenerDefinition>.into_iter().collect();
        all.sort_by_key(|d| d.id);
        all
    }

    /// Whether the listener's queue is a quorum queue (`quorum`, or `x-queue-type` in
    /// `arguments(...)`).
    pub fn is_quorum(&self) -> bool {
        self.queue_arguments
            .iter()
            .any(|(key, value)| *key == "x-queue-type" && *value == ArgValue::Str("quorum"))
    }

    /// What this listener needs declared: its exchange, its queue, and a binding per key; for a
    /// partitioned listener, each partition's queue and a binding per key and partition.
    pub fn declarations(&self) -> Vec<Declarable> {
        let mut queue = Queue::durable(self.queue).with_durable(self.durable);
        if self.exclusive {
            queue = queue.exclusive();
        }
        if self.auto_delete {
            queue = queue.auto_delete();
        }
        for (key, value) in self.queue_arguments {
            queue = queue.argument(key, value.to_amqp());
        }
        // The macro allows 1..=Partitions::MAX only; a hand-made definition out of range is
        // reported when the listener starts.
        let partitions = self.partitions.and_then(|n| Partitions::new(n).ok());
        let mut out = Vec::new();
        if let Some(exchange) = self.exchange {
            let kind = match self.exchange_type {
                "fanout" => ExchangeType::Fanout,
                "topic" => ExchangeType::Topic,
                "headers" => ExchangeType::Headers,
                "direct" => ExchangeType::Direct,
                other => ExchangeType::Custom(other.to_owned()),
            };
            out.push(Exchange::new(exchange, kind).into());
        }
        match partitions {
            Some(partitions) => out.extend(partitions.queues(&queue)),
            None => out.push(queue.into()),
        }
        if let Some(exchange) = self.exchange {
            let keys: &[&str] = if self.keys.is_empty() {
                &[""]
            } else {
                self.keys
            };
            for key in keys {
                if let Some(partitions) = partitions {
                    out.extend(partitions.bindings(self.queue, exchange, key));
                    continue;
                }
                let mut binding = Binding::queue(self.queue).to(exchange).key(*key);
                for (k, v) in self.binding_arguments {
                    binding = binding.argument(k, v.to_amqp());
                }
                out.push(binding.into());
            }
        }
        out
    }
}
