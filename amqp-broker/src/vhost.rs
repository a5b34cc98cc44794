//! A virtual host: its exchanges, queues and bindings, and routing between them.
//!
//! The topology sits behind one read-write lock: publishes take it shared (to route), declarations
//! take it exclusively. Queue contents are not behind it: each [`Queue`] has its own lock, always
//! taken after (never while waiting for) the topology lock.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use parking_lot::{Mutex, RwLock};

use crate::dead_letter::{Reason, dead_lettered, is_cycle};
use crate::delayed::{Delayed, Pending, delay_of};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind, routing_keys};
use crate::memory::MemoryMonitor;
use crate::message::Message;
use crate::metrics::{QueueStats, VhostMetrics};
use crate::queue::{ConnId, Consumer, Counts, DeclareFlags, Enqueued, Policy, Queue};
use crate::store::definitions::{BindingDef, ExchangeDef, QueueDef};
use crate::store::{
    DELAYED_LOG, Definitions, QueueStore, Recovered, RecoveredQueue, Store, format,
};

/// Exchanges every vhost has, as in RabbitMQ.
const BUILT_IN_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Queue arguments RabbitMQ compares when a queue is declared again (others are ignored).
const EQUIVALENCE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-delivery-limit",
];

/// The prefix of direct reply-to pseudo-queues.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What an `x-delayed-message` exchange does with a message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Delay {
    /// How long it waits.
    pub delay: Duration,
    /// Whether the exchange is durable (then a persistent message is stored while it waits).
    pub durable: bool,
}

/// Exchange flags from `exchange.declare`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExchangeFlags {
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
}

/// Queue flags from `queue.declare`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueFlags {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
}

/// Where [`Vhost::declare_queue_authorized`] is when it asks for a permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeclareStep {
    /// The queue's name is known (existing or not).
    Named,
    /// The queue does not exist and is about to be created.
    Creating,
}

/// One virtual host.
#[derive(Debug)]
pub(crate) struct Vhost {
    /// The vhost's name (`/`).
    pub name: String,
    topology: RwLock<Topology>,
    /// Direct reply-to consumers by their `amq.rabbitmq.reply-to.…` address.
    reply_to: Mutex<HashMap<String, Arc<Consumer>>>,
    /// Where durable things are kept (`None`: the broker runs in memory only).
    store: Option<Arc<Store>>,
    /// Messages held by `x-delayed-message` exchanges.
    pub(crate) delayed: Delayed,
    /// Counts the bodies of messages held (flow control); every accepted body goes through it.
    pub(crate) memory: Arc<MemoryMonitor>,
    /// Connections, channels and confirm latency, for `/metrics`.
    pub(crate) metrics: Arc<VhostMetrics>,
    /// The broker's caps on every queue (an operator policy), applied over each queue's own
    /// arguments when it is declared or recovered.
    limits: QueueLimits,
    /// This vhost, for the queues' and the delay timer's tasks (which must not keep it alive).
    me: Weak<Vhost>,
}

/// Caps the broker puts on every queue, over what each queue's arguments ask for: RabbitMQ's
/// operator policies, set once for the whole broker.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueLimits {
    /// Most body bytes of ready messages a queue holds ([`crate::Config::queue_max_length_bytes`]).
    pub max_length_bytes: Option<u64>,
}

#[derive(Debug, Default)]
struct Topology {
    exchanges: HashMap<ShortString, Exchange>,
    queues: HashMap<ShortString, Arc<Queue>>,
    /// The counters of deleted queues, so that the vhost's totals never go down.
    deleted_queue_stats: QueueStats,
}

/// What became of a message the operator published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Published {
    /// At least one queue (or a delayed exchange) took it.
    Routed,
    /// No queue was bound to take it.
    Unroutable,
    /// A queue refused it (a length limit with `reject-publish`, or the store failing): a
    /// publisher with confirms would get a nack.
    Refused,
}

/// An exchange and its bindings at one moment, for the management API.
#[derive(Debug)]
pub(crate) struct ExchangeSnapshot {
    pub name: String,
    pub kind: &'static str,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// Bindings with this exchange as the source, in the order made.
    pub bindings: Vec<Binding>,
}

/// Where a published message goes.
#[derive(Debug, Default)]
pub(crate) struct Route {
    /// The queues it is routed to (each once).
    pub queues: Vec<Arc<Queue>>,
}

impl Vhost {
    /// A vhost without flow control (its memory alarm never goes on).
    #[cfg(test)]
    pub fn new(name: &str, store: Option<Arc<Store>>) -> Arc<Self> {
        Self::with_limits(
            name,
            store,
            MemoryMonitor::new(u64::MAX),
            QueueLimits::default(),
        )
    }

    /// A vhost whose accepted message bodies `memory` counts, and whose queues are capped by
    /// `limits`.
    pub fn with_limits(
        name: &str,
        store: Option<Arc<Store>>,
        memory: Arc<MemoryMonitor>,
        limits: QueueLimits,
    ) -> Arc<Self> {
        let mut topology = Topology::default();
        for (name, kind) in BUILT_IN_EXCHANGES {
            let x = Exchange::new(
                (*name).into(),
                *kind,
                true,
                false,
                false,
                FieldTable::default(),
            );
            topology.exchanges.insert((*name).into(), x);
        }
        Arc::new_cyclic(|me| Self {
            name: name.to_owned(),
            topology: RwLock::new(topology),
            reply_to: Mutex::new(HashMap::new()),
            store,
            delayed: Delayed::default(),
            memory,
            metrics: Arc::default(),
            limits,
            me: me.clone(),
        })
    }

    /// The store, when the broker has one.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Rebuilds durable exchanges, queues (with their messages) and bindings from the store.
    pub fn restore(&self, recovered: Recovered) {
        let Some(store) = &self.store else { return };
        let Recovered {
            definitions,
            mut queues,
            delayed,
            ..
        } = recovered;
        let mut topo = self.topology.write();
        for x in definitions.exchanges {
            let Some(kind) = ExchangeKind::parse(&x.kind) else {
                tracing::error!(exchange = %x.name, kind = x.kind, "unknown exchange type; not recovered");
                continue;
            };
            let ex = Exchange::new(
                x.name.clone(),
                kind,
                true,
                x.auto_delete,
                x.internal,
                x.arguments,
            );
            topo.exchanges.insert(x.name, ex);
        }
        for q in definitions.queues {
            let policy = match Policy::from_arguments(&q.arguments, &q.name, &self.name) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(queue = %q.name, "arguments no longer valid ({}); defaults used", e.text);
                    Policy::default()
                }
            }
            .capped(&self.limits);
            let link = QueueStore {
                id: q.id,
                store: store.clone(),
            };
            let queue = Queue::new(
                q.name.clone(),
                true,
                None,
                q.auto_delete,
                q.arguments,
                policy,
                Some(link),
                self.me.clone(),
            );
            if let Some(r) = queues.remove(&q.id) {
                // Only the index: bodies are read (and counted in `memory`) when consumers
                // reach them.
                queue.restore(r.messages, r.next_seq);
            }
            topo.queues.insert(q.name, queue);
        }
        for b in definitions.bindings {
            if let Some(x) = topo.exchanges.get_mut(&b.source) {
                x.bind(Binding {
                    destination: b.destination,
                    routing_key: b.routing_key,
                    arguments: b.arguments,
                });
            }
        }
        drop(topo);
        self.restore_delayed(delayed);
    }

    /// Puts back the persistent delayed messages: they go when due, from their exchange (if it
    /// is gone by then, they are dropped, as when it is deleted while they wait).
    fn restore_delayed(&self, delayed: RecoveredQueue) {
        self.delayed.continue_after(delayed.next_seq);
        for (due, seq, payload) in delayed.timed {
            self.memory.hold(payload.len() as u64);
            self.delayed.restore(self.me.clone(), due, seq, payload);
        }
    }

    /// Rewrites the definitions file if a durable definition changed (541 if it cannot).
    fn save(&self, topo: &Topology) -> AmqpResult {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store
            .write_definitions(&topo.definitions())
            .map_err(|reason| {
                AmqpError::internal_error(format_args!("cannot store definitions: {reason}"))
            })
    }

    /// Durable exchanges, durable non-exclusive queues and the bindings between them, with or
    /// without a store: what a definitions export holds.
    pub fn durable_definitions(&self) -> Definitions {
        self.topology
            .read()
            .definitions_where(|q| q.durable && q.exclusive_owner.is_none())
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.topology.read().queues.len()
    }

    /// Every queue, in name order.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<_> = self.topology.read().queues.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// What happened to the messages of every queue this vhost has had (deleted ones
    /// included, up to their deletion), in this run of the broker.
    pub fn stats(&self) -> QueueStats {
        let topo = self.topology.read();
        let mut total = topo.deleted_queue_stats;
        for q in topo.queues.values() {
            total += q.stats();
        }
        total
    }

    // ----- exchanges -----

    pub fn declare_exchange(
        &self,
        name: &ShortString,
        kind: &str,
        passive: bool,
        flags: ExchangeFlags,
        arguments: &FieldTable,
    ) -> AmqpResult {
        if name.as_str().is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let mut topo = self.topology.write();
        if passive {
            return topo.exchange(name, &self.name).map(|_| ());
        }
        let Some(kind) = ExchangeKind::parse(kind) else {
            return Err(AmqpError::command_invalid(format_args!(
                "unknown exchange type '{kind}'"
            )));
        };
        if kind.routes_as(arguments).is_none() {
            // The delayed-message plugin's words.
            return Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type",
            ));
        }
        if let Some(x) = topo.exchanges.get(name) {
            let what = Resource::Exchange(name, &self.name);
            inequivalent(what, "type", kind.as_str(), x.kind.as_str())?;
            inequivalent(what, "durable", flags.durable, x.durable)?;
            inequivalent(what, "auto_delete", flags.auto_delete, x.auto_delete)?;
            inequivalent(what, "internal", flags.internal, x.internal)?;
            let key = "alternate-exchange";
            inequivalent(
                what,
                key,
                Arg(arguments.inner().get(key)),
                Arg(x.arguments.inner().get(key)),
            )?;
            return Ok(());
        }
        check_name("exchange", name)?;
        let x = Exchange::new(
            name.clone(),
            kind,
            flags.durable,
            flags.auto_delete,
            flags.internal,
            arguments.clone(),
        );
        topo.exchanges.insert(name.clone(), x);
        self.save(&topo)
    }

    /// Whether an exchange named `name` exists.
    pub fn has_exchange(&self, name: &ShortString) -> bool {
        self.topology.read().exchanges.contains_key(name)
    }

    pub fn delete_exchange(&self, name: &ShortString, if_unused: bool) -> AmqpResult {
        if name.as_str().is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.as_str().starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let mut topo = self.topology.write();
        let Some(x) = topo.exchanges.get(name) else {
            return Ok(()); // Deleting what is not there succeeds, as in RabbitMQ.
        };
        if if_unused && x.in_use() {
            return Err(AmqpError::precondition_failed(format_args!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        topo.remove_exchange(name);
        self.save(&topo)
    }

    /// Binds (or with `bind = false` unbinds) a destination to a source exchange.
    pub fn set_binding(
        &self,
        bind: bool,
        source: &ShortString,
        destination: Destination,
        routing_key: &ShortString,
        arguments: &FieldTable,
        conn: ConnId,
    ) -> AmqpResult {
        let mut topo = self.topology.write();
        match &destination {
            Destination::Queue(q) => {
                topo.queue(q, conn, &self.name)?;
            }
            Destination::Exchange(x) => {
                if x.as_str().is_empty() {
                    return Err(AmqpError::access_refused(
                        "operation not permitted on the default exchange",
                    ));
                }
                topo.exchange(x, &self.name)?;
            }
        }
        if source.as_str().is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let x = topo.exchange_mut(source, &self.name)?;
        let binding = Binding {
            destination,
            routing_key: routing_key.clone(),
            arguments: arguments.clone(),
        };
        if bind {
            x.bind(binding);
        } else if x.unbind(&binding) && x.auto_delete && !x.in_use() {
            topo.remove_exchange(source);
        }
        self.save(&topo)
    }

    /// Where a message the broker itself publishes goes (internal exchanges included; none if
    /// the exchange is missing).
    fn route_any(
        &self,
        exchange: &ShortString,
        keys: &[String],
        headers: Option<&FieldTable>,
    ) -> Route {
        let topo = self.topology.read();
        topo.route(exchange, keys, headers, &self.name)
            .unwrap_or_default()
    }

    /// The delay a message published to `exchange` waits for: `Some` when it is an
    /// `x-delayed-message` exchange and the `x-delay` header asks for a positive delay.
    pub fn delay_for(&self, exchange: &ShortString, headers: Option<&FieldTable>) -> Option<Delay> {
        if exchange.as_str().is_empty() {
            return None; // the default exchange is a direct one: no lookup (one per publish)
        }
        let topo = self.topology.read();
        let x = topo.exchanges.get(exchange)?;
        if x.kind != ExchangeKind::DelayedMessage {
            return None;
        }
        Some(Delay {
            delay: delay_of(headers)?,
            durable: x.durable,
        })
    }

    /// Holds a message for an `x-delayed-message` exchange. A persistent message on a durable
    /// exchange is logged in the store first: `Ok(true)` says so (its confirm waits for the
    /// sync); `Err` carries why the store refuses writes.
    pub fn schedule_delayed(
        &self,
        keys: &[String],
        msg: &Message,
        delay: Delay,
    ) -> Result<bool, Arc<str>> {
        let persistent = msg.properties.delivery_mode() == &Some(2);
        let store = self
            .store
            .as_deref()
            .filter(|_| delay.durable && persistent);
        if let Some(reason) = store.and_then(Store::failure) {
            return Err(reason);
        }
        let held = self
            .delayed
            .schedule(self.me.clone(), delay.delay, keys, msg, store);
        self.memory.hold(held as u64);
        Ok(store.is_some())
    }

    /// A delayed message is due: route it from its exchange (dropped if that is gone), then
    /// settle its record in the store.
    pub(crate) fn route_delayed(&self, seq: u64, p: Pending) {
        self.memory.release(p.payload.len() as u64);
        match format::delayed(&p.payload) {
            Ok(d) => {
                let m = d.message;
                let msg = Arc::new(Message {
                    exchange: m.exchange,
                    routing_key: m.routing_key,
                    properties: m.properties,
                    body: self.memory.track(m.body),
                });
                let headers = msg.properties.headers().as_ref();
                let route = self.route_any(&msg.exchange, &d.keys, headers);
                for q in route.queues {
                    q.publish(msg.clone());
                }
            }
            // Encoded by this process or checked by recovery: only a bug gets here.
            Err(format::Malformed(what)) => {
                tracing::error!(seq, "delayed message cannot be decoded ({what}); dropped");
            }
        }
        if let Some(store) = self.store.as_ref().filter(|_| p.stored) {
            // Written after the queue records above are synced (see the store's writer).
            store.settled(DELAYED_LOG, seq);
        }
    }

    /// The destinations of a message published to `exchange`: 404 when it does not exist, 403
    /// when it is internal.
    pub fn route(
        &self,
        exchange: &ShortString,
        keys: &[String],
        headers: Option<&FieldTable>,
    ) -> AmqpResult<Route> {
        let topo = self.topology.read();
        // The default exchange is never internal: no lookup for it (one per publish).
        let internal = || topo.exchanges.get(exchange).filter(|x| x.internal);
        if let Some(x) = (!exchange.as_str().is_empty()).then(internal).flatten() {
            return Err(AmqpError::access_refused(format_args!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                x.name, self.name
            )));
        }
        topo.route(exchange, keys, headers, &self.name)
    }

    /// Republishes a message `queue` rejected to the queue's dead-letter exchange, if it has one
    /// (with no such exchange, or no route from it, the message is dropped, as in RabbitMQ).
    /// A queue the message would cycle back to without a rejection on the way does not get it
    /// (see [`is_cycle`]).
    pub fn dead_letter(&self, queue: &Queue, msg: &Message, reason: Reason) {
        let Some(exchange) = queue.policy.dead_letter_exchange.clone() else {
            return;
        };
        queue.counters.dead_lettered.inc();
        let routing_key = queue
            .policy
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| msg.routing_key.clone());
        let dead = Arc::new(dead_lettered(
            msg,
            &queue.name,
            reason,
            exchange,
            routing_key,
        ));
        let headers = dead.properties.headers().as_ref();
        let keys = routing_keys(dead.routing_key.as_str(), headers);
        let route = self.route_any(&dead.exchange, &keys, headers);
        for q in route.queues {
            if reason != Reason::Rejected && is_cycle(&dead, q.name.as_str()) {
                tracing::debug!(queue = %q.name, "dead-letter cycle: message dropped");
                continue;
            }
            q.publish(dead.clone());
        }
    }

    // ----- queues -----

    /// Declares (or checks, when passive) a queue; returns its name (generated for an empty
    /// one), the queue and its counts.
    pub fn declare_queue(
        &self,
        name: &ShortString,
        passive: bool,
        flags: QueueFlags,
        arguments: &FieldTable,
        conn: ConnId,
    ) -> AmqpResult<(Arc<Queue>, Counts)> {
        self.declare_queue_authorized(name, passive, flags, arguments, conn, &|_, _| Ok(()))
    }

    /// [`Vhost::declare_queue`] with permission checks, unless passive: `authorize` is called
    /// with the queue's final name (generated for an empty one) at [`DeclareStep::Named`],
    /// before anything happens, and again at [`DeclareStep::Creating`] if the queue is new.
    pub fn declare_queue_authorized(
        &self,
        name: &ShortString,
        passive: bool,
        flags: QueueFlags,
        arguments: &FieldTable,
        conn: ConnId,
        authorize: &dyn Fn(&ShortString, DeclareStep) -> AmqpResult,
    ) -> AmqpResult<(Arc<Queue>, Counts)> {
        let mut topo = self.topology.write();
        if passive {
            let q = topo.queue(name, conn, &self.name)?;
            q.touch();
            return Ok((q.clone(), q.counts()));
        }
        let name = if name.as_str().is_empty() {
            crate::codec::short(format!("amq.gen-{}", random_token()))
        } else {
            check_name("queue", name)?;
            name.clone()
        };
        authorize(&name, DeclareStep::Named)?;
        if let Some(q) = topo.queues.get(&name) {
            let q = q.clone();
            check_owner(&q, conn, &self.name)?;
            if flags.exclusive && q.exclusive_owner.is_none() {
                return Err(locked(&name, &self.name));
            }
            let what = Resource::Queue(&name, &self.name);
            // Exclusive queues never outlive their connection, so RabbitMQ ignores durability.
            if q.exclusive_owner.is_none() {
                inequivalent(what, "durable", flags.durable, q.durable)?;
            }
            inequivalent(what, "auto_delete", flags.auto_delete, q.auto_delete)?;
            for key in EQUIVALENCE_ARGS {
                inequivalent(
                    what,
                    key,
                    Arg(arguments.inner().get(*key)),
                    Arg(q.arguments.inner().get(*key)),
                )?;
            }
            q.touch();
            let counts = q.counts();
            return Ok((q, counts));
        }
        authorize(&name, DeclareStep::Creating)?;
        let owner = flags.exclusive.then_some(conn);
        let declared = DeclareFlags {
            durable: flags.durable,
            exclusive: flags.exclusive,
            auto_delete: flags.auto_delete,
        };
        let policy =
            Policy::for_declare(arguments, &name, &self.name, Some(declared))?.capped(&self.limits);
        let link = match &self.store {
            Some(store) if flags.durable && owner.is_none() => Some(QueueStore {
                id: store.new_queue_id(),
                store: store.clone(),
            }),
            _ => None,
        };
        let q = Queue::new(
            name.clone(),
            flags.durable,
            owner,
            flags.auto_delete,
            arguments.clone(),
            policy,
            link,
            self.me.clone(),
        );
        topo.queues.insert(name, q.clone());
        self.save(&topo)?;
        let counts = q.counts();
        Ok((q, counts))
    }

    /// The queue named `name`, if this connection may use it (404, 405 otherwise).
    pub fn queue(&self, name: &ShortString, conn: ConnId) -> AmqpResult<Arc<Queue>> {
        self.topology.read().queue(name, conn, &self.name).cloned()
    }

    /// Deletes a queue after checking `if-unused` / `if-empty`; returns its message count.
    /// A queue that does not exist is deleted already (0 messages), as in RabbitMQ.
    pub fn delete_queue(
        &self,
        name: &ShortString,
        if_unused: bool,
        if_empty: bool,
        conn: ConnId,
    ) -> AmqpResult<u32> {
        let mut topo = self.topology.write();
        let q = match topo.queue(name, conn, &self.name) {
            Ok(q) => q.clone(),
            Err(e) if e.code == crate::error::reply::NOT_FOUND => return Ok(0),
            Err(e) => return Err(e),
        };
        q.check_delete(if_unused, if_empty, &self.name)?;
        let n = topo.remove_queue(name);
        self.save(&topo)?;
        Ok(n)
    }

    /// Deletes an auto-delete queue that lost its last consumer.
    pub fn delete_unused_queue(&self, q: &Arc<Queue>) {
        let mut topo = self.topology.write();
        if topo
            .queues
            .get(&q.name)
            .is_some_and(|cur| Arc::ptr_eq(cur, q))
        {
            topo.remove_queue(&q.name);
            if let Err(e) = self.save(&topo) {
                tracing::error!("{}", e.text);
            }
        }
    }

    /// Deletes the exclusive queues of a connection that closed.
    pub fn delete_exclusive_queues(&self, conn: ConnId) {
        let mut topo = self.topology.write();
        let names: Vec<_> = topo
            .queues
            .values()
            .filter(|q| q.exclusive_owner == Some(conn))
            .map(|q| q.name.clone())
            .collect();
        for name in names {
            topo.remove_queue(&name);
        }
        if let Err(e) = self.save(&topo) {
            tracing::error!("{}", e.text);
        }
    }

    // ----- for the management API -----

    /// The queue named `name`, whoever owns it (for the management API's listings).
    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.topology.read().queues.get(name).cloned()
    }

    /// Every exchange with its bindings, by name.
    pub fn exchanges(&self) -> Vec<ExchangeSnapshot> {
        let topo = self.topology.read();
        let mut all: Vec<_> = topo
            .exchanges
            .values()
            .map(|x| ExchangeSnapshot {
                name: x.name.to_string(),
                kind: x.kind.as_str(),
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
                bindings: x.bindings().to_vec(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Publishes a message the operator sent (the management API's publish), routed as
    /// `basic.publish` routes it. Its body is counted for flow control like any other; the
    /// answer does not wait for the store's sync.
    pub fn publish_by_operator(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        properties: amq_protocol::protocol::BasicProperties,
        body: bytes::Bytes,
    ) -> AmqpResult<Published> {
        let headers = properties.headers().clone();
        let keys = routing_keys(routing_key.as_str(), headers.as_ref());
        let msg = Arc::new(Message {
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            properties,
            body: self.memory.track(body),
        });
        if let Some(delay) = self.delay_for(exchange, headers.as_ref()) {
            return Ok(match self.schedule_delayed(&keys, &msg, delay) {
                Ok(_) => Published::Routed,
                Err(_) => Published::Refused,
            });
        }
        let route = self.route(exchange, &keys, headers.as_ref())?;
        let mut outcome = Published::Unroutable;
        for q in &route.queues {
            match q.publish(msg.clone()) {
                Enqueued::Accepted if outcome == Published::Unroutable => {
                    outcome = Published::Routed;
                }
                Enqueued::Rejected | Enqueued::StoreFailed => outcome = Published::Refused,
                Enqueued::Accepted | Enqueued::Gone => {}
            }
        }
        Ok(outcome)
    }

    // ----- direct reply-to -----

    /// Registers a direct reply-to consumer under a fresh address and returns the address.
    pub fn register_reply_consumer(&self, consumer: Arc<Consumer>) -> String {
        let address = format!("{REPLY_TO}.{}", random_token());
        self.reply_to.lock().insert(address.clone(), consumer);
        address
    }

    pub fn unregister_reply_consumer(&self, address: &str) {
        self.reply_to.lock().remove(address);
    }

    /// The consumer behind a reply-to address, if it is still there.
    pub fn reply_consumer(&self, address: &str) -> Option<Arc<Consumer>> {
        self.reply_to.lock().get(address).cloned()
    }
}

impl Topology {
    /// The durable part: what the definitions file holds.
    fn definitions(&self) -> Definitions {
        self.definitions_where(|q| q.store.is_some())
    }

    /// Durable exchanges, the queues `durable_queue` accepts, and the bindings between them
    /// (queue ids are the store's, 0 for a queue without one).
    fn definitions_where(&self, durable_queue: impl Fn(&Queue) -> bool) -> Definitions {
        let builtin = |n: &ShortString| BUILT_IN_EXCHANGES.iter().any(|(b, _)| *b == n.as_str());
        let durable_queue = |n: &ShortString| self.queues.get(n).is_some_and(|q| durable_queue(q));
        let durable = |d: &Destination| match d {
            Destination::Queue(n) => durable_queue(n),
            Destination::Exchange(n) => self.exchanges.get(n).is_some_and(|x| x.durable),
        };
        let mut defs = Definitions::default();
        let mut exchanges: Vec<&Exchange> = self.exchanges.values().filter(|x| x.durable).collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for x in exchanges {
            if !builtin(&x.name) {
                defs.exchanges.push(ExchangeDef {
                    name: x.name.clone(),
                    kind: x.kind.as_str().to_owned(),
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                });
            }
            for b in x.bindings().iter().filter(|b| durable(&b.destination)) {
                defs.bindings.push(BindingDef {
                    source: x.name.clone(),
                    destination: b.destination.clone(),
                    routing_key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                });
            }
        }
        let mut queues: Vec<&Arc<Queue>> = self.queues.values().collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for q in queues {
            if durable_queue(&q.name) {
                defs.queues.push(QueueDef {
                    id: q.store.as_ref().map_or(0, |link| link.id),
                    name: q.name.clone(),
                    auto_delete: q.auto_delete,
                    arguments: q.arguments.clone(),
                });
            }
        }
        defs
    }

    /// The queues a message reaches from `exchange` (404 if it does not exist), following
    /// exchange-to-exchange bindings, each exchange once.
    fn route(
        &self,
        exchange: &ShortString,
        keys: &[String],
        headers: Option<&FieldTable>,
        vhost: &str,
    ) -> AmqpResult<Route> {
        if let ("", [key]) = (exchange.as_str(), keys) {
            // The usual publish: one key, one queue by that name at most.
            let queues = self.queues.get(key.as_str()).cloned().into_iter().collect();
            return Ok(Route { queues });
        }
        if exchange.as_str().is_empty() {
            let mut seen = BTreeSet::new();
            let queues = keys
                .iter()
                .filter(|k| seen.insert(k.as_str()))
                .filter_map(|k| self.queues.get(k.as_str()).cloned())
                .collect();
            return Ok(Route { queues });
        }
        let mut seen_exchanges = BTreeSet::from([exchange.clone()]);
        let mut pending = vec![self.exchange(exchange, vhost)?];
        let mut queue_names = BTreeSet::new();
        while let Some(x) = pending.pop() {
            let mut out = BTreeSet::new();
            for key in keys {
                x.route(key, headers, &mut out);
            }
            if out.is_empty() {
                // Nothing bound matched: the alternate exchange gets it, as in RabbitMQ.
                if let Some(ae) = alternate_exchange(&x.arguments) {
                    out.insert(Destination::Exchange(ae));
                }
            }
            for d in out {
                match d {
                    Destination::Queue(q) => {
                        queue_names.insert(q);
                    }
                    Destination::Exchange(e) => {
                        if let Some(next) = self.exchanges.get(&e) {
                            if seen_exchanges.insert(e) {
                                pending.push(next);
                            }
                        }
                    }
                }
            }
        }
        let queues = queue_names
            .iter()
            .filter_map(|q| self.queues.get(q).cloned())
            .collect();
        Ok(Route { queues })
    }

    fn exchange(&self, name: &ShortString, vhost: &str) -> AmqpResult<&Exchange> {
        self.exchanges
            .get(name)
            .ok_or_else(|| no_exchange(name, vhost))
    }

    fn exchange_mut(&mut self, name: &ShortString, vhost: &str) -> AmqpResult<&mut Exchange> {
        self.exchanges
            .get_mut(name)
            .ok_or_else(|| no_exchange(name, vhost))
    }

    fn queue(&self, name: &ShortString, conn: ConnId, vhost: &str) -> AmqpResult<&Arc<Queue>> {
        let q = self.queues.get(name).ok_or_else(|| {
            AmqpError::not_found(format_args!("no queue '{name}' in vhost '{vhost}'"))
        })?;
        check_owner(q, conn, vhost)?;
        Ok(q)
    }

    /// Removes an exchange, its bindings as a destination, and auto-delete sources left unused.
    fn remove_exchange(&mut self, name: &ShortString) {
        self.exchanges.remove(name);
        self.unbind_everywhere(&Destination::Exchange(name.clone()));
    }

    /// Removes a queue and its bindings; returns its message count.
    fn remove_queue(&mut self, name: &ShortString) -> u32 {
        let Some(q) = self.queues.remove(name) else {
            return 0;
        };
        self.unbind_everywhere(&Destination::Queue(name.clone()));
        let messages = q.delete();
        self.deleted_queue_stats += q.stats();
        messages
    }

    fn unbind_everywhere(&mut self, destination: &Destination) {
        let emptied: Vec<ShortString> = self
            .exchanges
            .values_mut()
            .filter_map(|x| {
                (x.unbind_destination(destination) && x.auto_delete && !x.in_use())
                    .then(|| x.name.clone())
            })
            .collect();
        for name in emptied {
            self.remove_exchange(&name);
        }
    }
}

/// The `alternate-exchange` argument of an exchange.
fn alternate_exchange(arguments: &FieldTable) -> Option<ShortString> {
    match arguments.inner().get("alternate-exchange")? {
        AMQPValue::LongString(s) => Some(crate::codec::short(
            String::from_utf8_lossy(s.as_bytes()).into_owned(),
        )),
        AMQPValue::ShortString(s) => Some(s.clone()),
        _ => None,
    }
}

fn check_owner(q: &Queue, conn: ConnId, vhost: &str) -> AmqpResult {
    match q.exclusive_owner {
        Some(owner) if owner != conn => Err(locked(&q.name, vhost)),
        _ => Ok(()),
    }
}

fn locked(name: &ShortString, vhost: &str) -> AmqpError {
    AmqpError::resource_locked(format_args!(
        "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be \
         originally declared on another connection or the exclusive property value does not match \
         that of the original declaration."
    ))
}

fn no_exchange(name: &ShortString, vhost: &str) -> AmqpError {
    AmqpError::not_found(format_args!("no exchange '{name}' in vhost '{vhost}'"))
}

/// `amq.` names are reserved for the broker (403, as RabbitMQ answers).
fn check_name(kind: &str, name: &ShortString) -> AmqpResult {
    if name.as_str().starts_with("amq.") {
        return Err(AmqpError::access_refused(format_args!(
            "{kind} name '{name}' contains reserved prefix 'amq.*'"
        )));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Resource<'a> {
    Exchange(&'a ShortString, &'a str),
    Queue(&'a ShortString, &'a str),
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Exchange(n, v) => write!(f, "exchange '{n}' in vhost '{v}'"),
            Resource::Queue(n, v) => write!(f, "queue '{n}' in vhost '{v}'"),
        }
    }
}

/// 406 "inequivalent arg" when a redeclaration differs from what exists.
fn inequivalent<T: PartialEq + fmt::Display>(
    what: Resource<'_>,
    arg: &str,
    received: T,
    current: T,
) -> AmqpResult {
    if received == current {
        return Ok(());
    }
    Err(AmqpError::precondition_failed(format_args!(
        "inequivalent arg '{arg}' for {what}: received '{received}' but current is '{current}'"
    )))
}

/// An optional argument value, printed the way RabbitMQ's messages show it.
#[derive(PartialEq)]
struct Arg<'a>(Option<&'a AMQPValue>);

impl fmt::Display for Arg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("none"),
            Some(AMQPValue::LongString(s)) => f.write_str(&String::from_utf8_lossy(s.as_bytes())),
            Some(AMQPValue::ShortString(s)) => f.write_str(s.as_str()),
            Some(v) => write!(f, "{v:?}"),
        }
    }
}

/// 22 URL-safe random characters, as in RabbitMQ's generated names.
pub(crate) fn random_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
