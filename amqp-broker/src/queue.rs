//! A queue: ready messages in order, its consumers, and round-robin delivery within credit.
//!
//! Each queue is its own single-writer structure (one mutex, never held across an await and never
//! while taking another lock), so a hot queue only ever contends with itself. Messages that are
//! out with a consumer live in the consuming channel's unacked map, not here; the queue only
//! counts them. A store that makes queues durable sits under [`Queue::publish`],
//! [`Queue::settle`] and [`Queue::requeue`].

mod paged;
mod policy;
mod ready;
mod timer;

use std::sync::{Arc, Weak};
use std::time::Instant;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::dead_letter::Reason;
use crate::error::{AmqpError, AmqpResult};
use crate::message::{Credit, Message, QueuedMessage};
use crate::metrics::{QueueCounters, QueueStats};
use crate::store::{QueueStore, RecoveredMessage};
use crate::vhost::Vhost;

use self::paged::PagedEntry;
pub(crate) use self::policy::{DeclareFlags, Overflow, Policy, integer};
use self::ready::{Pager, Ready};

/// Identifies a client connection (exclusive queues belong to one).
pub(crate) type ConnId = u64;

/// What queues and other connections send to a connection's task.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Deliver a message to a consumer.
    Deliver(Delivery),
    /// The consumer's queue is gone: tell the client with `basic.cancel`.
    Cancel {
        channel: u16,
        consumer_tag: ShortString,
    },
    /// A publish waited for the store: send its confirm (`ack: false` sends `basic.nack`).
    Confirmed {
        channel: u16,
        /// Which opening of the channel it is for (a channel id may be reused).
        epoch: u64,
        delivery_tag: u64,
        ack: bool,
        /// When the publish completed (for the confirm latency).
        published_at: std::time::Instant,
    },
    /// A `tx.commit` waited for the store: send `commit-ok`, or close the channel with the reason.
    Committed {
        channel: u16,
        epoch: u64,
        result: Result<(), Arc<str>>,
    },
}

/// One message on its way to one consumer.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The consumer it is for.
    pub consumer: Arc<Consumer>,
    /// The queue it came from (`None` for direct reply-to, which has no queue).
    pub queue: Option<Arc<Queue>>,
    /// The message and its place in the queue.
    pub entry: QueuedMessage,
}

/// Where a connection's task receives [`Outbound`] work.
pub(crate) type Outbox = mpsc::UnboundedSender<Outbound>;

/// A consumer as its queue sees it.
#[derive(Debug)]
pub(crate) struct Consumer {
    /// The consumer tag, unique within its channel.
    pub tag: ShortString,
    /// The connection it belongs to.
    pub conn: ConnId,
    /// The channel it was created on.
    pub channel: u16,
    /// Deliveries need no ack (and take no credit).
    pub no_ack: bool,
    /// No other consumer may share the queue.
    pub exclusive: bool,
    /// Per-consumer prefetch (`basic.qos` with `global = false`).
    pub credit: Credit,
    /// Per-channel prefetch (`basic.qos` with `global = true`), shared by the channel's consumers.
    pub channel_credit: Arc<Credit>,
    /// The owning connection's task.
    pub outbox: Outbox,
    /// `x-priority` from `basic.consume`: higher ones are served first while they have credit.
    pub priority: i32,
}

impl Consumer {
    /// Takes credit for one delivery from both windows, or from neither.
    fn try_take(&self) -> bool {
        if self.no_ack {
            return true;
        }
        if !self.credit.try_take() {
            return false;
        }
        if !self.channel_credit.try_take() {
            self.credit.give_back();
            return false;
        }
        true
    }

    /// Gives back the credit of one settled delivery.
    pub fn release(&self) {
        if !self.no_ack {
            self.credit.give_back();
            self.channel_credit.give_back();
        }
    }

    /// Whether this is the given consumer.
    fn is(&self, conn: ConnId, channel: u16, tag: &ShortString) -> bool {
        self.conn == conn && self.channel == channel && &self.tag == tag
    }
}

/// A queue's declared properties and its state.
#[derive(Debug)]
pub(crate) struct Queue {
    /// The queue's name.
    pub name: ShortString,
    /// Survives a restart (once the store exists).
    pub durable: bool,
    /// The connection that owns it, for exclusive queues.
    pub exclusive_owner: Option<ConnId>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-` arguments as declared (compared on redeclare).
    pub arguments: FieldTable,
    /// What the arguments ask for (limits, dead-lettering, TTL, priorities).
    pub policy: Policy,
    /// Where its persistent messages are logged (durable, non-exclusive queues with a store).
    pub store: Option<QueueStore>,
    /// The vhost, for dead-lettering and for deleting itself when it expires (`x-expires`).
    vhost: Weak<Vhost>,
    /// Wakes the timer task when the next deadline moves earlier (or the queue is deleted).
    wake: Arc<Notify>,
    /// What happened to its messages (atomics, counted without the lock; see [`Queue::stats`]).
    pub counters: QueueCounters,
    state: Mutex<State>,
}

/// What became of a message handed to a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// The queue holds it.
    Accepted,
    /// The queue refused it (full, `reject-publish`): the publisher is nacked.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
    /// The message had to be stored, and the store refuses writes (after a failed fsync).
    StoreFailed,
}

#[derive(Debug)]
struct State {
    /// Messages waiting for a consumer, by priority, each in `seq` order.
    ready: Ready,
    /// The next message's position.
    next_seq: u64,
    /// Consumers by `x-priority` (highest first), each priority in round-robin order; with a
    /// single active consumer, in subscription order (the first one is the active one).
    consumers: Vec<Arc<Consumer>>,
    /// Deliveries out with a consumer and not yet settled.
    unacked: usize,
    /// Their bodies' bytes.
    unacked_bytes: u64,
    /// Whether any consumer ever subscribed (auto-delete waits for the first).
    had_consumer: bool,
    /// Set once deleted: late publishes and requeues are dropped, as in RabbitMQ.
    deleted: bool,
    /// Messages that left for the dead-letter exchange: republished once the lock is released
    /// (the dead-letter route may lead back to this very queue).
    dead: Vec<(Arc<Message>, Reason)>,
    /// When the queue was last used (consumer, `basic.get`, declare), for `x-expires`.
    last_used: Instant,
    /// Whether the timer task runs.
    timer_started: bool,
    /// The deadline the timer task sleeps until (`None`: it waits to be woken).
    timer_at: Option<Instant>,
}

/// How much a queue holds now (the gauges of `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Depth {
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Their bodies' bytes (those kept on disk only included).
    pub ready_bytes: u64,
    /// Deliveries not yet acknowledged.
    pub unacked: u64,
    /// Their bodies' bytes.
    pub unacked_bytes: u64,
    /// Consumers subscribed.
    pub consumers: u64,
}

/// Counts reported by `queue.declare-ok`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counts {
    /// Ready messages.
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
}

impl Queue {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: ShortString,
        durable: bool,
        exclusive_owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
        policy: Policy,
        store: Option<QueueStore>,
        vhost: Weak<Vhost>,
    ) -> Arc<Self> {
        let pager = store.as_ref().map(|s| Pager {
            store: s.clone(),
            budget_bytes: s.store.queue_memory_budget_bytes(),
        });
        let state = State {
            ready: Ready::new(policy.max_priority, pager),
            next_seq: 0,
            consumers: Vec::new(),
            unacked: 0,
            unacked_bytes: 0,
            had_consumer: false,
            deleted: false,
            dead: Vec::new(),
            last_used: Instant::now(),
            timer_started: false,
            timer_at: None,
        };
        let q = Arc::new(Self {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            policy,
            store,
            vhost,
            wake: Arc::new(Notify::new()),
            counters: QueueCounters::default(),
            state: Mutex::new(state),
        });
        // Starts the timer if `x-expires` already counts.
        q.with_state(|_| ());
        q
    }

    /// Runs `f` under the queue's lock; then (unlocked) republishes what it dead-lettered and
    /// makes sure the timer will wake for the next deadline.
    fn with_state<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock();
        let out = f(&mut st);
        if !st.deleted {
            if let Some(next) = self.next_deadline(&st) {
                if st.timer_at.is_none_or(|t| next < t) {
                    if st.timer_started {
                        self.wake.notify_one();
                    } else {
                        st.timer_started = timer::spawn(Arc::downgrade(self), self.wake.clone());
                    }
                }
            }
        }
        let dead = std::mem::take(&mut st.dead);
        drop(st);
        if !dead.is_empty() {
            if let Some(vhost) = self.vhost.upgrade() {
                for (msg, reason) in dead {
                    vhost.dead_letter(self, &msg, reason);
                }
            }
        }
        out
    }

    /// The next time something is due: a message's expiry, or the queue's own (`x-expires`).
    fn next_deadline(&self, st: &State) -> Option<Instant> {
        let unused = self
            .policy
            .expires
            .filter(|_| st.consumers.is_empty())
            .map(|d| st.last_used + d);
        match (st.ready.next_deadline(), unused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired (or was woken): expire messages; delete the queue if it went unused for
    /// `x-expires`. Says when to run next.
    fn on_timer(self: &Arc<Self>) -> timer::Next {
        let now = Instant::now();
        let (next, expire_queue) = self.with_state(|st| {
            if st.deleted {
                return (timer::Next::Stop, false);
            }
            self.expire_locked(st, now);
            let unused = self.policy.expires.is_some_and(|d| {
                st.consumers.is_empty() && now.saturating_duration_since(st.last_used) >= d
            });
            st.timer_at = self.next_deadline(st);
            let next = match st.timer_at {
                _ if unused => timer::Next::Stop,
                Some(at) => timer::Next::At(at),
                None => timer::Next::Idle,
            };
            (next, unused)
        });
        if expire_queue {
            if let Some(vhost) = self.vhost.upgrade() {
                vhost.delete_unused_queue(self);
            }
        }
        next
    }

    /// Drops expired messages at the heads, dead-lettering them (reason `expired`).
    fn expire_locked(&self, st: &mut State, now: Instant) {
        let mut expired = Vec::new();
        st.ready.pop_expired(now, &mut expired);
        for e in expired {
            self.discard(st, e, Reason::Expired);
        }
    }

    /// A message leaves the queue without being consumed: settled in the store, and
    /// dead-lettered if the queue has a dead-letter exchange.
    fn discard(&self, st: &mut State, entry: QueuedMessage, reason: Reason) {
        self.log_settled(&entry);
        if self.policy.dead_letter_exchange.is_some() {
            st.dead.push((entry.msg, reason));
        }
    }

    /// Marks the queue used now (`x-expires` counts from here).
    pub fn touch(self: &Arc<Self>) {
        self.with_state(|st| {
            st.last_used = Instant::now();
            st.timer_at = None; // The deadline moved: let the timer look again when it wakes.
        });
    }

    /// When a message arriving now with its own TTL (`expiration`) `own_ttl` expires.
    fn deadline_for(&self, own_ttl: Option<std::time::Duration>, now: Instant) -> Option<Instant> {
        let ttl = match (self.policy.message_ttl, own_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|d| now + d)
    }

    /// Puts back what the store recovered, in order, before the queue is used. Bodies stay on
    /// disk until consumers reach them.
    pub fn restore(self: &Arc<Self>, messages: Vec<RecoveredMessage>, next_seq: u64) {
        let now = Instant::now();
        self.with_state(|st| {
            for m in messages {
                // The clock restarts at recovery (the store keeps no arrival time).
                let expires_at = self.deadline_for(m.ttl, now);
                let entry = PagedEntry::from_parts(
                    m.seq,
                    u64::from(m.body_bytes),
                    m.redelivered,
                    u32::from(m.redelivered),
                    expires_at,
                    false,
                );
                st.ready.push_paged(m.priority, entry);
            }
            st.next_seq = st.next_seq.max(next_seq);
        });
    }

    /// The store, if this message is logged in this queue (persistent, and the queue durable).
    pub fn store_for(&self, msg: &Message) -> Option<&QueueStore> {
        self.store
            .as_ref()
            .filter(|_| msg.properties.delivery_mode() == &Some(2))
    }

    /// Logs that a message left the queue for good.
    fn log_settled(&self, entry: &QueuedMessage) {
        if let Some(s) = self.store_for(&entry.msg) {
            s.store.settled(s.id, entry.seq);
        }
    }

    /// Logs that a message went to a consumer (once: a redelivered one was logged before).
    fn log_delivered(&self, entry: &QueuedMessage) {
        if entry.redelivered {
            return;
        }
        if let Some(s) = self.store_for(&entry.msg) {
            s.store.delivered(s.id, entry.seq);
        }
    }

    /// The properties a delivery of `entry` carries: a quorum queue adds `x-delivery-count` to
    /// redeliveries, as RabbitMQ does.
    pub fn properties_for(&self, entry: &QueuedMessage) -> Option<BasicProperties> {
        if !self.policy.quorum || entry.delivery_count == 0 {
            return None;
        }
        let mut headers = entry.msg.properties.headers().clone().unwrap_or_default();
        headers.insert(
            "x-delivery-count".into(),
            AMQPValue::LongLongInt(i64::from(entry.delivery_count)),
        );
        Some(entry.msg.properties.clone().with_headers(headers))
    }

    /// Ready messages and consumers.
    pub fn counts(&self) -> Counts {
        let st = self.state.lock();
        Counts {
            messages: count(st.ready.len()),
            consumers: count(st.consumers.len()),
        }
    }

    /// What happened to its messages since it was declared (in this run of the broker).
    pub fn stats(&self) -> QueueStats {
        self.counters.stats()
    }

    /// What it holds now.
    pub fn depth(&self) -> Depth {
        let st = self.state.lock();
        Depth {
            ready: st.ready.len() as u64,
            ready_bytes: st.ready.bytes(),
            unacked: st.unacked as u64,
            unacked_bytes: st.unacked_bytes,
            consumers: st.consumers.len() as u64,
        }
    }

    /// Its consumers now (the management API lists them).
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }

    /// Whether one more message of `bytes` would go over a limit.
    fn over_limit(&self, st: &State, extra: usize, bytes: u64) -> bool {
        self.policy
            .max_length
            .is_some_and(|max| (st.ready.len() + extra) as u64 > max)
            || self
                .policy
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes() + bytes > max)
    }

    /// Appends a routed message (within the length limits) and delivers what credit allows.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Enqueued {
        let store = self.store_for(&msg);
        if store.is_some_and(|s| s.store.failure().is_some()) {
            return Enqueued::StoreFailed;
        }
        self.with_state(|st| {
            if st.deleted {
                return Enqueued::Gone;
            }
            let now = Instant::now();
            let limited =
                self.policy.max_length.is_some() || self.policy.max_length_bytes.is_some();
            if limited {
                // The limits count ready messages; a message that a consumer can take at once
                // never waits, so deliver first.
                self.dispatch_locked(st, now);
            }
            let size = msg.body.len() as u64;
            if limited && self.policy.overflow != Overflow::DropHead && self.over_limit(st, 1, size)
            {
                if self.policy.overflow == Overflow::RejectPublishDlx
                    && self.policy.dead_letter_exchange.is_some()
                {
                    st.dead.push((msg, Reason::Maxlen));
                }
                return Enqueued::Rejected;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            // Logged under the lock, so the log has this queue's records in the queue's order.
            if let Some(s) = store {
                s.store.message(s.id, seq, &msg);
            }
            let expires_at = self.deadline_for(msg.ttl(), now);
            let entry = QueuedMessage {
                seq,
                redelivered: false,
                msg,
                expires_at,
                delivery_count: 0,
            };
            st.ready.push_back(entry, store.is_some());
            self.counters.published.inc();
            self.dispatch_locked(st, now);
            // drop-head: make room by dropping (dead-lettering) the oldest, as RabbitMQ does
            // (with a limit of 0 or a message larger than the byte limit, that is the new one).
            while self.over_limit(st, 0, 0) {
                let Some(dropped) = st.ready.pop_front() else {
                    break;
                };
                self.discard(st, dropped, Reason::Maxlen);
            }
            Enqueued::Accepted
        })
    }

    /// Delivers ready messages to consumers with credit.
    pub fn dispatch(self: &Arc<Self>) {
        self.with_state(|st| self.dispatch_locked(st, Instant::now()));
    }

    /// Delivers to the highest-priority consumers with credit, round-robin among equals (with a
    /// single active consumer, to the first one only). Expired messages are never delivered.
    fn dispatch_locked(self: &Arc<Self>, st: &mut State, now: Instant) {
        self.expire_locked(st, now);
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let candidates = if self.policy.single_active_consumer {
                1
            } else {
                st.consumers.len()
            };
            let Some(i) = (0..candidates).find(|&i| st.consumers[i].try_take()) else {
                return;
            };
            let consumer = st.consumers[i].clone();
            let Some(entry) = self.pop_live(st, now) else {
                consumer.release();
                return;
            };
            if !self.policy.single_active_consumer {
                // To the back of its priority group: round-robin among equals.
                let end = i + st.consumers[i..]
                    .iter()
                    .take_while(|c| c.priority == consumer.priority)
                    .count();
                st.consumers[i..end].rotate_left(1);
            }
            if !consumer.no_ack {
                st.out_with_consumer(&entry);
                self.log_delivered(&entry);
            }
            let delivery = Delivery {
                consumer: consumer.clone(),
                queue: Some(self.clone()),
                entry,
            };
            if let Err(mpsc::error::SendError(Outbound::Deliver(d))) =
                consumer.outbox.send(Outbound::Deliver(delivery))
            {
                // The connection is gone; it will remove its consumers. Keep the message.
                consumer.release();
                if !consumer.no_ack {
                    st.back_from_consumer(&d.entry);
                }
                st.ready.insert_in_order(d.entry);
                st.consumers.retain(|c| !Arc::ptr_eq(c, &consumer));
            }
        }
    }

    /// The next ready message that has not expired (expired ones met on the way are discarded).
    fn pop_live(&self, st: &mut State, now: Instant) -> Option<QueuedMessage> {
        loop {
            let entry = st.ready.pop_front()?;
            if !entry.expired_at(now) {
                return Some(entry);
            }
            self.discard(st, entry, Reason::Expired);
        }
    }

    /// Takes the next ready message for `basic.get`; with `no_ack` it is settled at once.
    /// Returns it with the number of messages still ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        self.with_state(|st| {
            let now = Instant::now();
            st.last_used = now;
            self.expire_locked(st, now);
            let entry = self.pop_live(st, now)?;
            if no_ack {
                self.log_settled(&entry);
            } else {
                st.out_with_consumer(&entry);
                self.log_delivered(&entry);
            }
            Some((entry, count(st.ready.len())))
        })
    }

    /// A delivery was acknowledged (or rejected without requeue): it is gone for good.
    pub fn settle(&self, entry: &QueuedMessage) {
        let mut st = self.state.lock();
        st.back_from_consumer(entry);
        self.log_settled(entry);
    }

    /// A delivery to a `no_ack` consumer reached its connection: it is gone for good.
    pub fn delivered_without_ack(&self, entry: &QueuedMessage) {
        let _st = self.state.lock();
        self.log_settled(entry);
    }

    /// Puts deliveries back in their original positions, marked redelivered, and delivers again.
    /// `was_unacked` says whether they were counted as out with a consumer. With
    /// `x-delivery-limit`, a message returned more often than that is dead-lettered instead
    /// (reason `delivery_limit`).
    pub fn requeue(self: &Arc<Self>, entries: Vec<QueuedMessage>, was_unacked: bool) {
        self.with_state(|st| {
            if was_unacked {
                for entry in &entries {
                    st.back_from_consumer(entry);
                }
            }
            if st.deleted {
                return;
            }
            for mut entry in entries {
                entry.redelivered = true;
                entry.delivery_count = entry.delivery_count.saturating_add(1);
                if self
                    .policy
                    .delivery_limit
                    .is_some_and(|limit| u64::from(entry.delivery_count) > limit)
                {
                    self.discard(st, entry, Reason::DeliveryLimit);
                    continue;
                }
                st.ready.insert_in_order(entry);
            }
            self.dispatch_locked(st, Instant::now());
        });
    }

    /// Puts back a delivery that never reached its consumer (the channel closed first); its
    /// redelivered flag stays as it was.
    pub fn return_undelivered(self: &Arc<Self>, entry: QueuedMessage, was_unacked: bool) {
        self.with_state(|st| {
            if was_unacked {
                st.back_from_consumer(&entry);
            }
            if st.deleted {
                return;
            }
            st.ready.insert_in_order(entry);
            self.dispatch_locked(st, Instant::now());
        });
    }

    /// Subscribes a consumer, enforcing exclusive consumers (403 as RabbitMQ answers).
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>, vhost: &str) -> AmqpResult {
        self.with_state(|st| {
            if st.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !st.consumers.is_empty())
            {
                return Err(AmqpError::access_refused(format_args!(
                    "queue '{}' in vhost '{vhost}' in exclusive use",
                    self.name
                )));
            }
            let at = if self.policy.single_active_consumer {
                st.consumers.len()
            } else {
                st.consumers
                    .partition_point(|c| c.priority >= consumer.priority)
            };
            st.consumers.insert(at, consumer);
            st.had_consumer = true;
            st.last_used = Instant::now();
            self.dispatch_locked(st, Instant::now());
            Ok(())
        })
    }

    /// Unsubscribes a consumer (without delivering to the others: the caller dispatches once
    /// the consumer's unacked messages are back). Returns true when an auto-delete queue just
    /// lost its last one and must now be deleted.
    pub fn remove_consumer(
        self: &Arc<Self>,
        conn: ConnId,
        channel: u16,
        tag: &ShortString,
    ) -> bool {
        self.with_state(|st| {
            st.consumers.retain(|c| !c.is(conn, channel, tag));
            if st.consumers.is_empty() {
                st.last_used = Instant::now();
                st.timer_at = None;
            }
            self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
        })
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let all = st.ready.take_all();
        for entry in &all.resident {
            self.log_settled(entry);
        }
        if let Some(s) = &self.store {
            for &seq in &all.paged {
                s.store.settled(s.id, seq);
            }
        }
        count(all.len())
    }

    /// Checks `queue.delete`'s conditions (406 as RabbitMQ answers).
    pub fn check_delete(&self, if_unused: bool, if_empty: bool, vhost: &str) -> AmqpResult {
        let st = self.state.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(AmqpError::precondition_failed(format_args!(
                "queue '{}' in vhost '{vhost}' in use",
                self.name
            )));
        }
        if if_empty && !st.ready.is_empty() {
            return Err(AmqpError::precondition_failed(format_args!(
                "queue '{}' in vhost '{vhost}' is not empty",
                self.name
            )));
        }
        Ok(())
    }

    /// Marks the queue deleted, drops its messages and cancels its consumers (each is told with
    /// `basic.cancel`). Returns the number of ready messages it had.
    pub fn delete(&self) -> u32 {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = count(st.ready.len());
        st.ready.take_all();
        if let Some(s) = &self.store {
            s.store.drop_queue(s.id);
        }
        for c in st.consumers.drain(..) {
            let _ = c.outbox.send(Outbound::Cancel {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
            });
        }
        self.wake.notify_one();
        n
    }
}

impl State {
    /// A delivery went out and waits for its ack.
    fn out_with_consumer(&mut self, entry: &QueuedMessage) {
        self.unacked += 1;
        self.unacked_bytes += entry.msg.body.len() as u64;
    }

    /// A delivery was settled or came back.
    fn back_from_consumer(&mut self, entry: &QueuedMessage) {
        self.unacked = self.unacked.saturating_sub(1);
        self.unacked_bytes = self
            .unacked_bytes
            .saturating_sub(entry.msg.body.len() as u64);
    }
}

#[cfg(test)]
impl Queue {
    /// Ready messages' bodies and redelivered flags, in order (for tests).
    pub fn ready_for_test(&self) -> Vec<(String, bool)> {
        let st = self.state.lock();
        st.ready
            .contents_for_test()
            .into_iter()
            .map(|(body, redelivered)| (String::from_utf8_lossy(&body).into_owned(), redelivered))
            .collect()
    }

    /// Memory charged for the ready messages held in memory (for tests).
    pub fn resident_bytes_for_test(&self) -> u64 {
        self.state.lock().ready.resident_bytes()
    }
}

/// AMQP counts are 32-bit.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
