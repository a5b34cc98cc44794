//! Declarations: exchanges, queues and bindings as values, declared at start and again after
//! every reconnection ([`crate::Connection::declare`]).
//!
//! Defaults follow Spring AMQP: exchanges and queues are durable unless said otherwise.

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::error::{Error, Result, reply_code};

/// An exchange type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by pattern (`*` one word, `#` zero or more).
    Topic,
    /// Routes by message headers.
    Headers,
    /// A plugin type, such as `x-delayed-message`.
    Custom(String),
}

impl ExchangeType {
    fn kind(&self) -> ExchangeKind {
        match self {
            Self::Direct => ExchangeKind::Direct,
            Self::Fanout => ExchangeKind::Fanout,
            Self::Topic => ExchangeKind::Topic,
            Self::Headers => ExchangeKind::Headers,
            Self::Custom(t) => ExchangeKind::Custom(t.clone()),
        }
    }
}

/// An exchange to declare.
///
/// # Examples
///
/// ```
/// use amqp_core::Exchange;
/// let login = Exchange::topic("login").durable(false);
/// assert_eq!(login.name(), "login");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    name: String,
    kind: ExchangeType,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: FieldTable,
}

impl Exchange {
    /// An exchange of any type; durable.
    pub fn new(name: impl Into<String>, kind: ExchangeType) -> Self {
        Self {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        }
    }
    /// A durable direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Direct)
    }
    /// A durable fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Fanout)
    }
    /// A durable topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Topic)
    }
    /// A durable headers exchange.
    pub fn headers(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Headers)
    }
    /// Whether it survives a broker restart (default true).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Deleted when its last binding goes.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
    /// Only other exchanges may publish to it.
    pub fn internal(mut self, internal: bool) -> Self {
        self.internal = internal;
        self
    }
    /// Adds an argument (such as `alternate-exchange`).
    pub fn argument(mut self, key: &str, value: AMQPValue) -> Self {
        self.arguments.insert(key.into(), value);
        self
    }
    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A queue to declare.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use amqp_core::Queue;
/// let orders = Queue::durable("orders")
///     .dead_letter_exchange("orders.dlx")
///     .message_ttl(Duration::from_secs(60))
///     .max_length(10_000);
/// assert_eq!(orders.name(), "orders");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Queue {
    name: String,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: FieldTable,
}

impl Queue {
    /// A durable queue.
    pub fn durable(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }
    /// A non-durable queue (gone when the broker restarts).
    pub fn transient(name: impl Into<String>) -> Self {
        Self::durable(name).with_durable(false)
    }
    /// Sets durability.
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Owned by this connection: other connections cannot use it, and it goes when the
    /// connection does (it is declared again after a reconnection).
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }
    /// Deleted when its last consumer goes.
    pub fn auto_delete(mut self) -> Self {
        self.auto_delete = true;
        self
    }
    /// A replicated quorum queue (`x-queue-type: quorum`): on a RabbitMQ cluster its messages
    /// live on a majority of the nodes, so the queue and what it holds outlast the loss of a
    /// node; a publisher confirm then means "replicated". A quorum queue is durable, neither
    /// exclusive nor auto-delete: declaring one that is not fails with
    /// [`Error::Configuration`] before anything is sent.
    ///
    /// ```
    /// use amqp_core::Queue;
    /// let orders = Queue::durable("orders").quorum().delivery_limit(5);
    /// assert!(orders.is_quorum());
    /// ```
    pub fn quorum(self) -> Self {
        self.argument("x-queue-type", AMQPValue::LongString("quorum".into()))
    }
    /// A quorum queue's poison-message guard (`x-delivery-limit`): a message returned to the
    /// queue (rejected with requeue, or its consumer gone) more than `limit` times is
    /// dead-lettered, or dropped without a dead-letter exchange. Only with
    /// [`quorum`](Self::quorum) (a classic queue would ignore it): declaring it on another queue
    /// fails with [`Error::Configuration`].
    pub fn delivery_limit(self, limit: u32) -> Self {
        self.argument("x-delivery-limit", AMQPValue::LongLongInt(i64::from(limit)))
    }
    /// Whether this is a quorum queue.
    pub fn is_quorum(&self) -> bool {
        matches!(
            self.arguments.inner().get("x-queue-type"),
            Some(AMQPValue::LongString(t)) if t.as_bytes() == b"quorum"
        )
    }
    /// What makes this declaration one RabbitMQ refuses or ignores, said before it is sent: a
    /// quorum queue that is not durable, or exclusive, or auto-delete; a delivery limit on a
    /// queue that is not a quorum queue.
    fn check(&self) -> Result<()> {
        let quorum = self.is_quorum();
        let problem = if quorum && !self.durable {
            "a quorum queue is durable: remove `with_durable(false)` (or `transient`), or `quorum()`"
        } else if quorum && self.exclusive {
            "a quorum queue is not exclusive: remove `exclusive()` or `quorum()`"
        } else if quorum && self.auto_delete {
            "a quorum queue is not auto-delete: remove `auto_delete()` or `quorum()`"
        } else if !quorum && self.arguments.inner().contains_key("x-delivery-limit") {
            "`delivery_limit` (x-delivery-limit) is for quorum queues: add `quorum()`, or remove it"
        } else {
            return Ok(());
        };
        Err(Error::Configuration(format!(
            "queue '{}': {problem}",
            self.name
        )))
    }
    /// Where rejected and expired messages go.
    pub fn dead_letter_exchange(self, exchange: &str) -> Self {
        self.argument(
            "x-dead-letter-exchange",
            AMQPValue::LongString(exchange.into()),
        )
    }
    /// The routing key dead-lettered messages get (default: their own).
    pub fn dead_letter_routing_key(self, key: &str) -> Self {
        self.argument(
            "x-dead-letter-routing-key",
            AMQPValue::LongString(key.into()),
        )
    }
    /// How long a message may wait in the queue.
    pub fn message_ttl(self, ttl: Duration) -> Self {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.argument("x-message-ttl", AMQPValue::LongLongInt(ms))
    }
    /// The most ready messages the queue holds.
    pub fn max_length(self, max: u32) -> Self {
        self.argument("x-max-length", AMQPValue::LongLongInt(i64::from(max)))
    }
    /// Only one consumer at a time receives (`x-single-active-consumer`); the others stand by
    /// and take over, in order, when it goes. What ordered partitions are built on.
    pub fn single_active_consumer(self) -> Self {
        self.argument("x-single-active-consumer", AMQPValue::Boolean(true))
    }
    /// Adds any argument.
    pub fn argument(mut self, key: &str, value: AMQPValue) -> Self {
        self.arguments.insert(key.into(), value);
        self
    }
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The same queue under another name (a partition of it).
    pub(crate) fn renamed(&self, name: String) -> Self {
        Self {
            name,
            ..self.clone()
        }
    }
}

/// What a binding leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Destination {
    Queue(String),
    Exchange(String),
}

/// A binding from an exchange to a queue or to another exchange.
///
/// # Examples
///
/// ```
/// use amqp_core::Binding;
/// let b = Binding::queue("login.log").to("login").key("login.*");
/// # let _ = b;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    destination: Destination,
    source: String,
    routing_key: String,
    arguments: FieldTable,
}

impl Binding {
    /// Binds a queue (complete it with [`to`](Self::to) and [`key`](Self::key)).
    pub fn queue(queue: impl Into<String>) -> Self {
        Self::with(Destination::Queue(queue.into()))
    }
    /// Binds an exchange to another (exchange-to-exchange).
    pub fn exchange(exchange: impl Into<String>) -> Self {
        Self::with(Destination::Exchange(exchange.into()))
    }
    fn with(destination: Destination) -> Self {
        Self {
            destination,
            source: String::new(),
            routing_key: String::new(),
            arguments: FieldTable::default(),
        }
    }
    /// The source exchange.
    pub fn to(mut self, exchange: impl Into<String>) -> Self {
        self.source = exchange.into();
        self
    }
    /// The binding key (a pattern for topic exchanges).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = key.into();
        self
    }
    /// A binding argument (for headers exchanges: `x-match` and the headers to match).
    pub fn argument(mut self, key: &str, value: AMQPValue) -> Self {
        self.arguments.insert(key.into(), value);
        self
    }
    fn describe(&self) -> String {
        let dest = match &self.destination {
            Destination::Queue(q) => format!("queue '{q}'"),
            Destination::Exchange(x) => format!("exchange '{x}'"),
        };
        format!("{} -> {dest} (key '{}')", self.source, self.routing_key)
    }
}

/// Anything that can be declared.
#[derive(Clone, Debug, PartialEq)]
pub enum Declarable {
    /// An exchange.
    Exchange(Exchange),
    /// A queue.
    Queue(Queue),
    /// A binding.
    Binding(Binding),
}

/// A list of declarations, in order (exchanges and queues before the bindings between them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declarables(pub Vec<Declarable>);

impl From<Exchange> for Declarables {
    fn from(x: Exchange) -> Self {
        Self(vec![Declarable::Exchange(x)])
    }
}
impl From<Queue> for Declarables {
    fn from(q: Queue) -> Self {
        Self(vec![Declarable::Queue(q)])
    }
}
impl From<Binding> for Declarables {
    fn from(b: Binding) -> Self {
        Self(vec![Declarable::Binding(b)])
    }
}
impl From<Declarable> for Declarables {
    fn from(d: Declarable) -> Self {
        Self(vec![d])
    }
}
impl From<Vec<Declarable>> for Declarables {
    fn from(v: Vec<Declarable>) -> Self {
        Self(v)
    }
}
impl<const N: usize> From<[Declarable; N]> for Declarables {
    fn from(v: [Declarable; N]) -> Self {
        Self(v.into())
    }
}
impl From<Exchange> for Declarable {
    fn from(x: Exchange) -> Self {
        Self::Exchange(x)
    }
}
impl From<Queue> for Declarable {
    fn from(q: Queue) -> Self {
        Self::Queue(q)
    }
}
impl From<Binding> for Declarable {
    fn from(b: Binding) -> Self {
        Self::Binding(b)
    }
}

/// Declares `items` in order on `ch`; the first failure stops (and closes the channel).
pub(crate) async fn declare_all(ch: &Channel, items: &[Declarable]) -> Result<()> {
    for item in items {
        declare_one(ch, item).await?;
    }
    Ok(())
}

async fn declare_one(ch: &Channel, item: &Declarable) -> Result<()> {
    let (kind, name, result) = match item {
        Declarable::Exchange(x) => {
            let opts = ExchangeDeclareOptions {
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                ..Default::default()
            };
            let r = ch
                .exchange_declare(
                    x.name.as_str().into(),
                    x.kind.kind(),
                    opts,
                    x.arguments.clone(),
                )
                .await;
            ("exchange", x.name.clone(), r.map(drop))
        }
        Declarable::Queue(q) => {
            q.check()?;
            let opts = QueueDeclareOptions {
                durable: q.durable,
                exclusive: q.exclusive,
                auto_delete: q.auto_delete,
                ..Default::default()
            };
            let r = ch
                .queue_declare(q.name.as_str().into(), opts, q.arguments.clone())
                .await;
            ("queue", q.name.clone(), r.map(drop))
        }
        Declarable::Binding(b) => {
            let r = match &b.destination {
                Destination::Queue(q) => {
                    ch.queue_bind(
                        q.as_str().into(),
                        b.source.as_str().into(),
                        b.routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        b.arguments.clone(),
                    )
                    .await
                }
                Destination::Exchange(x) => {
                    ch.exchange_bind(
                        x.as_str().into(),
                        b.source.as_str().into(),
                        b.routing_key.as_str().into(),
                        ExchangeBindOptions::default(),
                        b.arguments.clone(),
                    )
                    .await
                }
            };
            ("binding", b.describe(), r)
        }
    };
    result.map_err(|source| match reply_code(&source) {
        Some(406) => Error::DeclarationConflict {
            kind,
            name,
            detail: broker_text(&source),
        },
        _ => Error::Declaration {
            kind,
            name,
            source: Box::new(source),
        },
    })
}

/// The broker's reply text from a protocol error.
fn broker_text(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => p.get_message().to_string(),
        _ => e.to_string(),
    }
}

/// A header value from text.
pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
