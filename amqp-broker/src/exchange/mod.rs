//! Exchanges: their declared properties and their bindings, and routing a message to
//! destinations.

mod headers;
mod topic;

use std::collections::{BTreeSet, HashMap};

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};

use self::topic::TopicTrie;

/// Exchange types the broker knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-delayed-message` (the RabbitMQ plugin's interface): holds a message for its `x-delay`
    /// header's milliseconds, then routes it as its `x-delayed-type` argument says.
    DelayedMessage,
}

impl ExchangeKind {
    /// Parses the `type` argument of `exchange.declare`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            "x-delayed-message" => Some(Self::DelayedMessage),
            _ => None,
        }
    }

    /// The type's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::DelayedMessage => "x-delayed-message",
        }
    }

    /// How an exchange of this type with these arguments routes (`None`: an
    /// `x-delayed-message` exchange without a valid `x-delayed-type`).
    pub fn routes_as(self, arguments: &FieldTable) -> Option<Self> {
        if self != Self::DelayedMessage {
            return Some(self);
        }
        let inner = match arguments.inner().get("x-delayed-type")? {
            AMQPValue::LongString(s) => Self::parse(&String::from_utf8_lossy(s.as_bytes()))?,
            AMQPValue::ShortString(s) => Self::parse(s.as_str())?,
            _ => return None,
        };
        (inner != Self::DelayedMessage).then_some(inner)
    }
}

/// The routing keys of a message: its own, then those in its `CC` and `BCC` headers (arrays of
/// strings), as RabbitMQ's sender-selected distribution has it.
pub(crate) fn routing_keys(routing_key: &str, headers: Option<&FieldTable>) -> Vec<String> {
    let mut keys = vec![routing_key.to_owned()];
    for header in ["CC", "BCC"] {
        if let Some(AMQPValue::FieldArray(a)) = headers.and_then(|h| h.inner().get(header)) {
            for v in a.as_slice() {
                match v {
                    AMQPValue::LongString(s) => {
                        keys.push(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    AMQPValue::ShortString(s) => keys.push(s.to_string()),
                    _ => {}
                }
            }
        }
    }
    keys
}

/// Where a binding leads: a queue, or another exchange (exchange-to-exchange bindings).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Destination {
    Queue(ShortString),
    Exchange(ShortString),
}

/// A binding as RabbitMQ identifies it: destination, routing key and arguments.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Binding {
    pub destination: Destination,
    pub routing_key: ShortString,
    pub arguments: FieldTable,
}

/// An exchange and its bindings (as the source).
#[derive(Debug)]
pub(crate) struct Exchange {
    pub name: ShortString,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// The type whose routing it uses (an `x-delayed-message` exchange's `x-delayed-type`).
    routes_as: ExchangeKind,
    /// Every binding, in the order made (what `unbind` and deletion work on).
    bindings: Vec<Binding>,
    /// The type-specific index that routing reads.
    index: Index,
}

#[derive(Debug)]
enum Index {
    /// Routing key → destinations.
    Direct(HashMap<ShortString, BTreeSet<Destination>>),
    /// Every destination, whatever the key.
    Fanout(BTreeSet<Destination>),
    /// Patterns in a trie of words.
    Topic(TopicTrie<Destination>),
    /// Matched against message headers one binding at a time (as RabbitMQ does).
    Headers,
}

impl Exchange {
    pub fn new(
        name: ShortString,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let routes_as = kind.routes_as(&arguments).unwrap_or(ExchangeKind::Direct);
        let index = match routes_as {
            ExchangeKind::Direct | ExchangeKind::DelayedMessage => Index::Direct(HashMap::new()),
            ExchangeKind::Fanout => Index::Fanout(BTreeSet::new()),
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers,
        };
        Self {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            routes_as,
            bindings: Vec::new(),
            index,
        }
    }

    /// Every binding with this exchange as the source, in the order made.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Whether the exchange has bindings (for `exchange.delete` with `if-unused`).
    pub fn in_use(&self) -> bool {
        !self.bindings.is_empty()
    }

    /// Adds a binding; binding twice is a no-op, as in AMQP.
    pub fn bind(&mut self, binding: Binding) {
        if self.bindings.contains(&binding) {
            return;
        }
        match &mut self.index {
            Index::Direct(map) => {
                map.entry(binding.routing_key.clone())
                    .or_default()
                    .insert(binding.destination.clone());
            }
            Index::Fanout(set) => {
                set.insert(binding.destination.clone());
            }
            Index::Topic(trie) => {
                trie.insert(binding.routing_key.as_str(), binding.destination.clone())
            }
            Index::Headers => {}
        }
        self.bindings.push(binding);
    }

    /// Removes one binding; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(at) = self.bindings.iter().position(|b| b == binding) else {
            return false;
        };
        self.bindings.remove(at);
        self.unindex(binding);
        true
    }

    /// Removes every binding to `destination`; returns whether there were any.
    pub fn unbind_destination(&mut self, destination: &Destination) -> bool {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.bindings)
            .into_iter()
            .partition(|b| &b.destination == destination);
        self.bindings = kept;
        for b in &gone {
            self.unindex(b);
        }
        !gone.is_empty()
    }

    /// Drops `binding` from the index unless an equal (destination, key) pair remains bound with
    /// other arguments.
    fn unindex(&mut self, binding: &Binding) {
        let still_bound = self.bindings.iter().any(|b| match self.routes_as {
            ExchangeKind::Fanout => b.destination == binding.destination,
            _ => b.destination == binding.destination && b.routing_key == binding.routing_key,
        });
        if still_bound {
            return;
        }
        match &mut self.index {
            Index::Direct(map) => {
                if let Some(set) = map.get_mut(&binding.routing_key) {
                    set.remove(&binding.destination);
                    if set.is_empty() {
                        map.remove(&binding.routing_key);
                    }
                }
            }
            Index::Fanout(set) => {
                set.remove(&binding.destination);
            }
            Index::Topic(trie) => trie.remove(binding.routing_key.as_str(), &binding.destination),
            Index::Headers => {}
        }
    }

    /// Adds to `out` the destinations a message with this key and these headers goes to.
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut BTreeSet<Destination>,
    ) {
        match &self.index {
            Index::Direct(map) => {
                if let Some(set) = map.get(routing_key) {
                    out.extend(set.iter().cloned());
                }
            }
            Index::Fanout(set) => out.extend(set.iter().cloned()),
            Index::Topic(trie) => trie.matches(routing_key, out),
            Index::Headers => {
                let empty = FieldTable::default();
                let headers = headers.unwrap_or(&empty);
                for b in &self.bindings {
                    if headers::matches(&b.arguments, headers) {
                        out.insert(b.destination.clone());
                    }
                }
            }
        }
    }
}
