//! A queue: ready messages in order, its consumers, and round-robin delivery within credit.
//!
//! Each queue is its own single-writer structure (one mutex, never held across an await and never
//! while taking another lock), so a hot queue only ever contends with itself. Messages that are
//! out with a consumer live in the consuming channel's unacked map, not here; the queue only
//! counts them. A store that makes queues durable sits under [`Queue::publish`],
//! [`Queue::settle`] and [`Queue::requeue`].

use std::collections::VecDeque;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::{AmqpError, AmqpResult};
use crate::message::{Credit, Message, QueuedMessage};
use crate::store::QueueStore;
use crate::store::format::MessageRecord;

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
    /// What the arguments ask for (limits, dead-lettering).
    pub policy: Policy,
    /// Where its persistent messages are logged (durable, non-exclusive queues with a store).
    pub store: Option<QueueStore>,
    state: Mutex<State>,
}

/// What a queue's `x-` arguments ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Most ready messages the queue holds (`x-max-length`).
    pub max_length: Option<u64>,
    /// What happens to a message that would exceed it (`x-overflow`).
    pub overflow: Overflow,
    /// Where rejected messages are republished (`x-dead-letter-exchange`).
    pub dead_letter_exchange: Option<ShortString>,
    /// The routing key they get there (`x-dead-letter-routing-key`; default: their own).
    pub dead_letter_routing_key: Option<ShortString>,
}

/// `x-overflow`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Drop the oldest ready message to make room (RabbitMQ's default).
    #[default]
    DropHead,
    /// Refuse the new message: a publisher in confirm mode gets `basic.nack`.
    RejectPublish,
}

impl Policy {
    /// Reads and checks the arguments (406 for bad values, with RabbitMQ's wording).
    pub fn from_arguments(args: &FieldTable, queue: &ShortString, vhost: &str) -> AmqpResult<Self> {
        let invalid = |key: &str, why: &str| {
            AmqpError::precondition_failed(format_args!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        // Arguments RabbitMQ honours that this broker does not yet: refusing them beats accepting
        // a queue that silently behaves otherwise (messages that never expire, say).
        for key in NOT_YET_SUPPORTED {
            if args.contains_key(key) {
                return Err(AmqpError::precondition_failed(format_args!(
                    "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': not supported by this broker yet"
                )));
            }
        }
        if let Some(kind) = args.inner().get("x-queue-type").and_then(text) {
            if kind != "classic" {
                return Err(invalid(
                    "x-queue-type",
                    "only classic queues are supported by this broker yet",
                ));
            }
        }
        let mut policy = Policy::default();
        if let Some(v) = args.inner().get("x-max-length") {
            let n = integer(v).ok_or_else(|| invalid("x-max-length", "{unacceptable_type}"))?;
            policy.max_length =
                Some(u64::try_from(n).map_err(|_| invalid("x-max-length", "{value_negative}"))?);
        }
        if let Some(v) = args.inner().get("x-overflow") {
            policy.overflow = match text(v).as_deref() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                _ => return Err(invalid("x-overflow", "{unacceptable_value}")),
            };
        }
        for (key, slot) in [
            ("x-dead-letter-exchange", &mut policy.dead_letter_exchange),
            (
                "x-dead-letter-routing-key",
                &mut policy.dead_letter_routing_key,
            ),
        ] {
            if let Some(v) = args.inner().get(key) {
                let name = text(v).ok_or_else(|| invalid(key, "{unacceptable_type}"))?;
                *slot = Some(ShortString::from(name));
            }
        }
        if policy.dead_letter_routing_key.is_some() && policy.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined",
            ));
        }
        Ok(policy)
    }
}

/// Queue arguments with RabbitMQ semantics this broker does not implement yet.
const NOT_YET_SUPPORTED: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length-bytes",
    "x-max-priority",
    "x-single-active-consumer",
    "x-delivery-limit",
];

fn integer(v: &AMQPValue) -> Option<i64> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    })
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
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

#[derive(Debug, Default)]
struct State {
    /// Messages waiting for a consumer, in `seq` order.
    ready: VecDeque<QueuedMessage>,
    /// The next message's position.
    next_seq: u64,
    /// Consumers in subscription order.
    consumers: Vec<Arc<Consumer>>,
    /// Where the next round-robin search starts.
    next_consumer: usize,
    /// Deliveries out with a consumer and not yet settled.
    unacked: usize,
    /// Whether any consumer ever subscribed (auto-delete waits for the first).
    had_consumer: bool,
    /// Set once deleted: late publishes and requeues are dropped, as in RabbitMQ.
    deleted: bool,
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
    pub fn new(
        name: ShortString,
        durable: bool,
        exclusive_owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
        policy: Policy,
        store: Option<QueueStore>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            policy,
            store,
            state: Mutex::new(State::default()),
        })
    }

    /// Puts back what the store recovered, in order, before the queue is used.
    pub fn restore(&self, messages: Vec<(MessageRecord, bool)>, next_seq: u64) {
        let mut st = self.state.lock();
        for (m, redelivered) in messages {
            st.ready.push_back(QueuedMessage {
                seq: m.seq,
                redelivered,
                msg: Arc::new(Message {
                    exchange: m.exchange,
                    routing_key: m.routing_key,
                    properties: m.properties,
                    body: m.body,
                }),
            });
        }
        st.next_seq = st.next_seq.max(next_seq);
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

    /// Ready messages and consumers.
    pub fn counts(&self) -> Counts {
        let st = self.state.lock();
        Counts {
            messages: count(st.ready.len()),
            consumers: count(st.consumers.len()),
        }
    }

    /// Appends a routed message (within `x-max-length`) and delivers what credit allows.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Enqueued {
        let store = self.store_for(&msg);
        if store.is_some_and(|s| s.store.failure().is_some()) {
            return Enqueued::StoreFailed;
        }
        let mut st = self.state.lock();
        if st.deleted {
            return Enqueued::Gone;
        }
        if let Some(max) = self.policy.max_length {
            // The limit counts ready messages; a message that a consumer can take at once never
            // waits, so deliver first.
            self.dispatch_locked(&mut st);
            if st.ready.len() as u64 >= max {
                match self.policy.overflow {
                    Overflow::RejectPublish => return Enqueued::Rejected,
                    Overflow::DropHead => {
                        if max == 0 {
                            return Enqueued::Accepted; // Dropped at once, as RabbitMQ does.
                        }
                        while st.ready.len() as u64 >= max {
                            if let Some(dropped) = st.ready.pop_front() {
                                self.log_settled(&dropped);
                            }
                        }
                    }
                }
            }
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        // Logged under the lock, so the log has this queue's records in the queue's order.
        if let Some(s) = store {
            s.store.message(s.id, seq, &msg);
        }
        st.ready.push_back(QueuedMessage {
            seq,
            redelivered: false,
            msg,
        });
        self.dispatch_locked(&mut st);
        Enqueued::Accepted
    }

    /// Delivers ready messages to consumers with credit, round-robin.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut State) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let start = st.next_consumer % n;
            let Some(i) = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| st.consumers[i].try_take())
            else {
                return;
            };
            st.next_consumer = i + 1;
            let consumer = st.consumers[i].clone();
            let entry = st.ready.pop_front().expect("checked non-empty");
            if !consumer.no_ack {
                st.unacked += 1;
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
                    st.unacked -= 1;
                }
                st.ready.push_front(d.entry);
                st.consumers.remove(i);
            }
        }
    }

    /// Takes the next ready message for `basic.get`; with `no_ack` it is settled at once.
    /// Returns it with the number of messages still ready.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        let entry = st.ready.pop_front()?;
        if no_ack {
            self.log_settled(&entry);
        } else {
            st.unacked += 1;
            self.log_delivered(&entry);
        }
        Some((entry, count(st.ready.len())))
    }

    /// A delivery was acknowledged (or rejected without requeue): it is gone for good.
    pub fn settle(&self, entry: &QueuedMessage) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(1);
        self.log_settled(entry);
    }

    /// A delivery to a `no_ack` consumer reached its connection: it is gone for good.
    pub fn delivered_without_ack(&self, entry: &QueuedMessage) {
        let _st = self.state.lock();
        self.log_settled(entry);
    }

    /// Puts deliveries back in their original positions, marked redelivered, and delivers again.
    /// `was_unacked` says whether they were counted as out with a consumer.
    pub fn requeue(self: &Arc<Self>, entries: Vec<QueuedMessage>, was_unacked: bool) {
        let mut st = self.state.lock();
        if was_unacked {
            st.unacked = st.unacked.saturating_sub(entries.len());
        }
        if st.deleted {
            return;
        }
        for mut entry in entries {
            entry.redelivered = true;
            let at = st.ready.partition_point(|e| e.seq < entry.seq);
            st.ready.insert(at, entry);
        }
        self.dispatch_locked(&mut st);
    }

    /// Puts back a delivery that never reached its consumer (the channel closed first); its
    /// redelivered flag stays as it was.
    pub fn return_undelivered(self: &Arc<Self>, entry: QueuedMessage, was_unacked: bool) {
        let mut st = self.state.lock();
        if was_unacked {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if st.deleted {
            return;
        }
        let at = st.ready.partition_point(|e| e.seq < entry.seq);
        st.ready.insert(at, entry);
        self.dispatch_locked(&mut st);
    }

    /// Subscribes a consumer, enforcing exclusive consumers (403 as RabbitMQ answers).
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>, vhost: &str) -> AmqpResult {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{vhost}' in exclusive use",
                self.name
            )));
        }
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Unsubscribes a consumer. Returns true when an auto-delete queue just lost its last one and
    /// must now be deleted.
    pub fn remove_consumer(&self, conn: ConnId, channel: u16, tag: &ShortString) -> bool {
        let mut st = self.state.lock();
        st.consumers.retain(|c| !c.is(conn, channel, tag));
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len();
        for entry in std::mem::take(&mut st.ready) {
            self.log_settled(&entry);
        }
        count(n)
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
        st.ready.clear();
        if let Some(s) = &self.store {
            s.store.drop_queue(s.id);
        }
        for c in st.consumers.drain(..) {
            let _ = c.outbox.send(Outbound::Cancel {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
            });
        }
        n
    }
}

#[cfg(test)]
impl Queue {
    /// Ready messages' bodies and redelivered flags, in order (for tests).
    pub fn ready_for_test(&self) -> Vec<(String, bool)> {
        let st = self.state.lock();
        st.ready
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.msg.body).into_owned(),
                    e.redelivered,
                )
            })
            .collect()
    }
}

/// AMQP counts are 32-bit.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
