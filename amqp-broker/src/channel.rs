//! One channel's state and the methods that act on it: content assembly, consumers, unacked
//! deliveries, prefetch, publisher confirms and transactions.
//!
//! A channel is owned by its connection's task, so nothing here is locked; what queues need to
//! see (prefetch credit) is shared through [`Credit`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, exchange, queue, tx,
};
use amq_protocol::types::ShortString;
use bytes::BytesMut;

use crate::access::Grant;
use crate::access::permission::{Kind, Op};
use crate::codec::{FrameWriter, short};
use crate::config::Config;
use crate::dead_letter::Reason;
use crate::error::{AmqpError, AmqpResult, reply};
use crate::exchange::{Destination, routing_keys};
use crate::message::{Credit, Message, QueuedMessage};
use crate::queue::{ConnId, Consumer, Delivery, Enqueued, Outbox, Queue};
use crate::registry::{ChannelView, ChannelViews};
use crate::vhost::{DeclareStep, ExchangeFlags, QueueFlags, REPLY_TO, Vhost};

/// What the channel handlers need from their connection.
#[derive(Debug)]
pub(crate) struct ConnIo<'a> {
    /// The connection's id (exclusive queues, consumer identity).
    pub conn: ConnId,
    /// The vhost the connection opened.
    pub vhost: &'a Vhost,
    /// Broker settings (limits).
    pub config: &'a Config,
    /// The connection's output batch.
    pub out: &'a mut FrameWriter,
    /// Where queues send this connection's deliveries.
    pub outbox: &'a Outbox,
    /// Negotiated frame_max (for splitting bodies).
    pub frame_max: u32,
    /// The authenticated user.
    pub user: &'a str,
    /// Where channels list themselves for the management API.
    pub channel_views: &'a ChannelViews,
    /// What the user may do in the vhost (403 ACCESS_REFUSED otherwise).
    pub grant: &'a Grant,
}

/// A message being received: `basic.publish`, then a content header, then body frames.
#[derive(Debug, Default)]
enum Content {
    #[default]
    Idle,
    /// `basic.publish` seen; the content header comes next.
    Header(basic::Publish),
    /// Header seen; body frames come until `remaining` is 0.
    Body {
        publish: basic::Publish,
        properties: Box<BasicProperties>,
        body: BytesMut,
        remaining: u64,
    },
}

/// A consumer on this channel.
#[derive(Debug)]
struct ChannelConsumer {
    /// The queue it consumes from (`None` for direct reply-to).
    queue: Option<Arc<Queue>>,
    /// What the queue holds of it.
    consumer: Arc<Consumer>,
}

/// A delivery waiting for its ack.
#[derive(Debug)]
struct Unacked {
    /// The queue it came from; it goes back there on requeue.
    queue: Arc<Queue>,
    /// The message and its position.
    entry: QueuedMessage,
    /// The consumer whose credit it holds (`None` for `basic.get`).
    consumer: Option<Arc<Consumer>>,
}

/// Work buffered by `tx.select` until `tx.commit`.
#[derive(Debug, Default)]
struct Transaction {
    publishes: Vec<(basic::Publish, RoutedBy, Arc<Message>)>,
    settles: Vec<Settle>,
}

/// What a message is routed by: its routing keys (with `CC` and `BCC`) and its headers as
/// published (the stored message has lost `BCC`).
#[derive(Debug)]
struct RoutedBy {
    keys: Vec<String>,
    headers: Option<amq_protocol::types::FieldTable>,
}

/// An ack, nack or reject.
#[derive(Clone, Copy, Debug)]
struct Settle {
    delivery_tag: u64,
    multiple: bool,
    /// `None`: ack; `Some(requeue)`: nack or reject.
    reject: Option<bool>,
}

/// Numbers each channel opening, so a late confirm for a closed channel never reaches a new
/// channel with the same id.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// What routing a message did.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// No queue refused it (a confirm is an ack, not a nack).
    accepted: bool,
    /// At least one queue logged it: its confirm waits for the store's sync.
    stored: bool,
    /// A queue had to log it and the store refuses writes.
    store_failed: bool,
}

/// An open channel.
#[derive(Debug)]
pub(crate) struct Channel {
    id: u16,
    /// This opening of the channel (see [`NEXT_EPOCH`]).
    epoch: u64,
    /// Confirms waiting for the store; while any wait, later confirms queue behind them so the
    /// publisher sees confirms in order.
    pending_confirms: u64,
    content: Content,
    consumers: HashMap<ShortString, ChannelConsumer>,
    unacked: BTreeMap<u64, Unacked>,
    next_delivery_tag: u64,
    /// Prefetch for consumers created from now on (`basic.qos`, `global = false`).
    consumer_prefetch: u16,
    /// Prefetch shared by all consumers on the channel (`basic.qos`, `global = true`).
    channel_credit: Arc<Credit>,
    /// In confirm mode: the sequence number of the last publish.
    confirms: Option<u64>,
    /// In tx mode: the buffered work.
    tx: Option<Transaction>,
    /// This channel's direct reply-to address, once it consumes `amq.rabbitmq.reply-to`.
    reply_address: Option<String>,
    /// The last queue declared here: an empty queue name in later methods means this one.
    last_queue: Option<ShortString>,
    /// What the management API shows of this channel (updated on qos, confirm.select and
    /// tx.select only).
    view: Arc<ChannelView>,
    /// The last exchange this channel was allowed to publish to: publishing again there skips
    /// the permission check, which keeps it off the hot path (RabbitMQ caches granted checks
    /// per channel too, so a revoked permission applies to new channels).
    publish_granted: Option<ShortString>,
}

impl Channel {
    /// A channel that just opened, listed in `views`.
    pub fn new(id: u16, views: &ChannelViews) -> Self {
        let channel_credit = Arc::new(Credit::new(0));
        let view = ChannelView::new(id, channel_credit.clone());
        views.opened(&view);
        Self {
            id,
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            pending_confirms: 0,
            content: Content::Idle,
            consumers: HashMap::new(),
            unacked: BTreeMap::new(),
            next_delivery_tag: 1,
            consumer_prefetch: 0,
            channel_credit,
            confirms: None,
            tx: None,
            reply_address: None,
            last_queue: None,
            view,
            publish_granted: None,
        }
    }

    // ----- frames -----

    /// Handles a method. An error closes the channel or the connection (the caller decides from
    /// the code).
    pub fn method(&mut self, io: &mut ConnIo<'_>, method: AMQPClass) -> AmqpResult {
        if !matches!(self.content, Content::Idle) {
            return Err(self.unexpected_frame());
        }
        match method {
            AMQPClass::Channel(m) => self.channel_method(io, m),
            AMQPClass::Exchange(m) => self.exchange_method(io, m),
            AMQPClass::Queue(m) => self.queue_method(io, m),
            AMQPClass::Basic(m) => self.basic_method(io, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(m)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirms.get_or_insert(0);
                self.view.set_confirm();
                if !m.nowait {
                    self.reply(
                        io,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(io, m),
            AMQPClass::Access(_) => {
                use amq_protocol::protocol::access;
                self.reply(
                    io,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format_args!(
                "method {}/{} is not allowed here",
                other.get_amqp_class_id(),
                other.get_amqp_method_id()
            ))),
        }
    }

    /// Handles a content header frame.
    pub fn header(
        &mut self,
        io: &mut ConnIo<'_>,
        class_id: u16,
        body_size: u64,
        properties: Box<BasicProperties>,
    ) -> AmqpResult {
        if !matches!(self.content, Content::Header(_)) {
            return Err(self.unexpected_frame());
        }
        let Content::Header(publish) = std::mem::take(&mut self.content) else {
            unreachable!("checked above");
        };
        if class_id != 60 {
            return Err(AmqpError::unexpected_frame(format_args!(
                "expected content header for class 60, got one for class {class_id} instead"
            )));
        }
        if body_size > io.config.max_message_bytes {
            return Err(AmqpError::precondition_failed(format_args!(
                "message size {body_size} is larger than configured max size {}",
                io.config.max_message_bytes
            ))
            .on(60, 40));
        }
        if body_size == 0 {
            return self.publish(io, publish, *properties, BytesMut::new());
        }
        let body = BytesMut::with_capacity(body_size.min(1 << 20) as usize);
        self.content = Content::Body {
            publish,
            properties,
            body,
            remaining: body_size,
        };
        Ok(())
    }

    /// Handles a content body frame.
    pub fn body(&mut self, io: &mut ConnIo<'_>, piece: &[u8]) -> AmqpResult {
        let too_long = match &self.content {
            Content::Body { remaining, .. } => piece.len() as u64 > *remaining,
            _ => return Err(self.unexpected_frame()),
        };
        if too_long {
            // RabbitMQ notices only at the next method; the answer is the same, given sooner.
            return Err(self.unexpected_frame());
        }
        let Content::Body {
            remaining, body, ..
        } = &mut self.content
        else {
            unreachable!("checked above");
        };
        let len = piece.len() as u64;
        body.extend_from_slice(piece);
        *remaining -= len;
        if *remaining == 0 {
            let Content::Body {
                publish,
                properties,
                body,
                ..
            } = std::mem::take(&mut self.content)
            else {
                unreachable!("matched above");
            };
            return self.publish(io, publish, *properties, body);
        }
        Ok(())
    }

    /// 505 for a frame that does not fit where the channel is in receiving a message, with
    /// RabbitMQ's wording.
    fn unexpected_frame(&self) -> AmqpError {
        match self.content {
            Content::Idle => {
                AmqpError::unexpected_frame("expected method frame, got non method frame instead")
            }
            Content::Header(_) => AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40),
            Content::Body { .. } => AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40),
        }
    }

    fn reply(&self, io: &mut ConnIo<'_>, method: AMQPClass) {
        io.out.method(self.id, &method);
    }

    // ----- channel -----

    fn channel_method(&mut self, io: &mut ConnIo<'_>, m: channel::AMQPMethod) -> AmqpResult {
        match m {
            channel::AMQPMethod::Open(_) => {
                Err(AmqpError::channel_error("second 'channel.open' seen"))
            }
            channel::AMQPMethod::Flow(f) if f.active => {
                self.reply(
                    io,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                );
                Ok(())
            }
            // RabbitMQ does not implement consumer flow control through channel.flow.
            channel::AMQPMethod::Flow(_) => Err(AmqpError::not_implemented("active=false")),
            channel::AMQPMethod::FlowOk(_) => Ok(()),
            // close and close-ok are handled by the connection, which owns the channel table.
            _ => Err(AmqpError::command_invalid("unexpected channel method")),
        }
    }

    // ----- exchange -----

    fn exchange_method(&mut self, io: &mut ConnIo<'_>, m: exchange::AMQPMethod) -> AmqpResult {
        use exchange::AMQPMethod as M;
        match m {
            M::Declare(d) => {
                if !d.passive && !d.exchange.as_str().is_empty() {
                    io.grant
                        .check(Op::Configure, Kind::Exchange, d.exchange.as_str())?;
                    // A new exchange's alternate exchange: read on it, write on the alternate.
                    if let Some(alternate) = string_arg(&d.arguments, "alternate-exchange") {
                        if !io.vhost.has_exchange(&d.exchange) {
                            io.grant
                                .check(Op::Read, Kind::Exchange, d.exchange.as_str())?;
                            io.grant.check(Op::Write, Kind::Exchange, &alternate)?;
                        }
                    }
                }
                let flags = ExchangeFlags {
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                };
                io.vhost.declare_exchange(
                    &d.exchange,
                    d.kind.as_str(),
                    d.passive,
                    flags,
                    &d.arguments,
                )?;
                if !d.nowait {
                    self.reply(
                        io,
                        AMQPClass::Exchange(M::DeclareOk(exchange::DeclareOk {})),
                    );
                }
            }
            M::Delete(d) => {
                // The default and amq.* exchanges are refused as such first (by the vhost), as
                // RabbitMQ does.
                if !d.exchange.as_str().is_empty() && !d.exchange.as_str().starts_with("amq.") {
                    io.grant
                        .check(Op::Configure, Kind::Exchange, d.exchange.as_str())?;
                }
                io.vhost.delete_exchange(&d.exchange, d.if_unused)?;
                if !d.nowait {
                    self.reply(io, AMQPClass::Exchange(M::DeleteOk(exchange::DeleteOk {})));
                }
            }
            M::Bind(b) => {
                check_binding(io, Kind::Exchange, &b.destination, &b.source)?;
                let dest = Destination::Exchange(b.destination);
                io.vhost.set_binding(
                    true,
                    &b.source,
                    dest,
                    &b.routing_key,
                    &b.arguments,
                    io.conn,
                )?;
                if !b.nowait {
                    self.reply(io, AMQPClass::Exchange(M::BindOk(exchange::BindOk {})));
                }
            }
            M::Unbind(b) => {
                check_binding(io, Kind::Exchange, &b.destination, &b.source)?;
                let dest = Destination::Exchange(b.destination);
                io.vhost.set_binding(
                    false,
                    &b.source,
                    dest,
                    &b.routing_key,
                    &b.arguments,
                    io.conn,
                )?;
                if !b.nowait {
                    self.reply(io, AMQPClass::Exchange(M::UnbindOk(exchange::UnbindOk {})));
                }
            }
            _ => return Err(AmqpError::command_invalid("unexpected exchange method")),
        }
        Ok(())
    }

    // ----- queue -----

    /// An empty queue name means the last queue declared on this channel.
    fn queue_name(&self, name: ShortString) -> AmqpResult<ShortString> {
        if !name.as_str().is_empty() {
            return Ok(name);
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// With both the queue and the key empty, the key is the last declared queue's name.
    fn binding_key(&self, queue: &ShortString, key: ShortString) -> ShortString {
        match &self.last_queue {
            Some(last) if queue.as_str().is_empty() && key.as_str().is_empty() => last.clone(),
            _ => key,
        }
    }

    fn queue_method(&mut self, io: &mut ConnIo<'_>, m: queue::AMQPMethod) -> AmqpResult {
        use queue::AMQPMethod as M;
        match m {
            M::Declare(d) if d.passive && is_reply_to(&d.queue) => {
                // Direct reply-to pseudo-queues exist while their consumer does, with one
                // consumer and no messages, as RabbitMQ reports them.
                let live = d.queue.as_str() == REPLY_TO
                    || io.vhost.reply_consumer(d.queue.as_str()).is_some();
                if !live {
                    return Err(AmqpError::not_found(format_args!(
                        "no queue '{}' in vhost '{}'",
                        d.queue, io.vhost.name
                    )));
                }
                if !d.nowait {
                    let ok = queue::DeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 1,
                    };
                    self.reply(io, AMQPClass::Queue(M::DeclareOk(ok)));
                }
            }
            M::Declare(d) => {
                // An empty name is no shortcut here: a passive declare of '' is a 404.
                let name = d.queue;
                let flags = QueueFlags {
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                };
                // RabbitMQ checks configure on the name the queue gets (a server-named one too)
                // and, for a new queue with a dead-letter exchange, read on the queue and write
                // on that exchange.
                let grant = io.grant;
                let dead_letter_exchange = string_arg(&d.arguments, "x-dead-letter-exchange");
                let authorize = |name: &ShortString, step: DeclareStep| match step {
                    DeclareStep::Named => grant.check(Op::Configure, Kind::Queue, name.as_str()),
                    DeclareStep::Creating => match &dead_letter_exchange {
                        Some(dlx) => {
                            grant.check(Op::Read, Kind::Queue, name.as_str())?;
                            grant.check(Op::Write, Kind::Exchange, dlx)
                        }
                        None => Ok(()),
                    },
                };
                let (q, counts) = io.vhost.declare_queue_authorized(
                    &name,
                    d.passive,
                    flags,
                    &d.arguments,
                    io.conn,
                    &authorize,
                )?;
                self.last_queue = Some(q.name.clone());
                if !d.nowait {
                    self.reply(
                        io,
                        AMQPClass::Queue(M::DeclareOk(queue::DeclareOk {
                            queue: q.name.clone(),
                            message_count: counts.messages,
                            consumer_count: counts.consumers,
                        })),
                    );
                }
            }
            M::Bind(b) => {
                let key = self.binding_key(&b.queue, b.routing_key);
                let queue = self.queue_name(b.queue)?;
                check_binding(io, Kind::Queue, &queue, &b.exchange)?;
                let dest = Destination::Queue(queue);
                io.vhost
                    .set_binding(true, &b.exchange, dest, &key, &b.arguments, io.conn)?;
                if !b.nowait {
                    self.reply(io, AMQPClass::Queue(M::BindOk(queue::BindOk {})));
                }
            }
            M::Unbind(b) => {
                let key = self.binding_key(&b.queue, b.routing_key);
                let queue = self.queue_name(b.queue)?;
                check_binding(io, Kind::Queue, &queue, &b.exchange)?;
                let dest = Destination::Queue(queue);
                io.vhost
                    .set_binding(false, &b.exchange, dest, &key, &b.arguments, io.conn)?;
                self.reply(io, AMQPClass::Queue(M::UnbindOk(queue::UnbindOk {})));
            }
            M::Purge(p) => {
                let name = self.queue_name(p.queue)?;
                io.grant.check(Op::Read, Kind::Queue, name.as_str())?;
                let q = io.vhost.queue(&name, io.conn)?;
                let message_count = q.purge();
                if !p.nowait {
                    self.reply(
                        io,
                        AMQPClass::Queue(M::PurgeOk(queue::PurgeOk { message_count })),
                    );
                }
            }
            M::Delete(d) => {
                let name = self.queue_name(d.queue)?;
                io.grant.check(Op::Configure, Kind::Queue, name.as_str())?;
                let message_count =
                    io.vhost
                        .delete_queue(&name, d.if_unused, d.if_empty, io.conn)?;
                if !d.nowait {
                    self.reply(
                        io,
                        AMQPClass::Queue(M::DeleteOk(queue::DeleteOk { message_count })),
                    );
                }
            }
            _ => return Err(AmqpError::command_invalid("unexpected queue method")),
        }
        Ok(())
    }

    // ----- basic -----

    fn basic_method(&mut self, io: &mut ConnIo<'_>, m: basic::AMQPMethod) -> AmqpResult {
        use basic::AMQPMethod as M;
        match m {
            M::Qos(q) => {
                if q.global {
                    self.channel_credit.set_limit(q.prefetch_count);
                } else {
                    self.consumer_prefetch = q.prefetch_count;
                    self.view.set_consumer_prefetch(q.prefetch_count);
                }
                self.reply(io, AMQPClass::Basic(M::QosOk(basic::QosOk {})));
                self.dispatch_all();
            }
            M::Consume(c) => self.consume(io, c)?,
            M::Cancel(c) => {
                if let Some(q) = self.cancel(io, &c.consumer_tag) {
                    // Its unacked messages stay with this channel; the others (or, with a single
                    // active consumer, the next one) may take what is ready.
                    q.dispatch();
                }
                if !c.nowait {
                    self.reply(
                        io,
                        AMQPClass::Basic(M::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
            }
            M::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                if self.publish_granted.as_ref() != Some(&p.exchange) {
                    io.grant
                        .check(Op::Write, Kind::Exchange, p.exchange.as_str())?;
                    self.publish_granted = Some(p.exchange.clone());
                }
                self.content = Content::Header(p);
            }
            M::Get(g) => self.get(io, g)?,
            M::Ack(a) => {
                self.settle(
                    io,
                    Settle {
                        delivery_tag: a.delivery_tag,
                        multiple: a.multiple,
                        reject: None,
                    },
                )?;
            }
            M::Nack(n) => {
                self.settle(
                    io,
                    Settle {
                        delivery_tag: n.delivery_tag,
                        multiple: n.multiple,
                        reject: Some(n.requeue),
                    },
                )?;
            }
            M::Reject(r) => {
                self.settle(
                    io,
                    Settle {
                        delivery_tag: r.delivery_tag,
                        multiple: false,
                        reject: Some(r.requeue),
                    },
                )?;
            }
            // RabbitMQ only implements recover with requeue.
            M::Recover(basic::Recover { requeue: false })
            | M::RecoverAsync(basic::RecoverAsync { requeue: false }) => {
                return Err(AmqpError::not_implemented("requeue=false"));
            }
            M::Recover(_) => {
                self.requeue_all_unacked();
                self.reply(io, AMQPClass::Basic(M::RecoverOk(basic::RecoverOk {})));
            }
            M::RecoverAsync(_) => self.requeue_all_unacked(),
            _ => return Err(AmqpError::command_invalid("unexpected basic method")),
        }
        Ok(())
    }

    fn consume(&mut self, io: &mut ConnIo<'_>, c: basic::Consume) -> AmqpResult {
        let tag = if c.consumer_tag.as_str().is_empty() {
            short(format!("amq.ctag-{}", crate::vhost::random_token()))
        } else {
            c.consumer_tag.clone()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format_args!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        if let Some(max) = io.config.max_consumers_per_channel {
            if self.consumers.len() >= max {
                return Err(AmqpError::not_allowed(format_args!(
                    "reached maximum ({max}) of consumers per channel"
                )));
            }
        }
        let reply_to = c.queue.as_str() == REPLY_TO;
        if reply_to && !c.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if reply_to && self.reply_address.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            conn: io.conn,
            channel: self.id,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            credit: Credit::new(self.consumer_prefetch),
            channel_credit: self.channel_credit.clone(),
            outbox: io.outbox.clone(),
            priority: consumer_priority(&c.arguments)?,
        });
        let queue = if reply_to {
            self.reply_address = Some(io.vhost.register_reply_consumer(consumer.clone()));
            None
        } else {
            let name = self.queue_name(c.queue)?;
            io.grant.check(Op::Read, Kind::Queue, name.as_str())?;
            Some(io.vhost.queue(&name, io.conn)?)
        };
        if let Some(q) = &queue {
            q.add_consumer(consumer.clone(), &io.vhost.name)?;
        }
        // The queue may already have sent deliveries, but they reach the client after consume-ok:
        // they arrive through this connection's outbox, which is read only after this returns.
        if !c.nowait {
            let ok = basic::ConsumeOk {
                consumer_tag: tag.clone(),
            };
            self.reply(io, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)));
        }
        self.consumers
            .insert(tag, ChannelConsumer { queue, consumer });
        Ok(())
    }

    /// Removes a consumer (unknown tags are ignored, as in RabbitMQ); its unacked deliveries stay.
    /// Returns its queue (still there), which the caller lets deliver to the remaining consumers.
    fn cancel(&mut self, io: &mut ConnIo<'_>, tag: &ShortString) -> Option<Arc<Queue>> {
        let cc = self.consumers.remove(tag)?;
        match cc.queue {
            Some(q) => {
                if q.remove_consumer(io.conn, self.id, tag) {
                    io.vhost.delete_unused_queue(&q);
                    return None;
                }
                Some(q)
            }
            None => {
                if let Some(address) = self.reply_address.take() {
                    io.vhost.unregister_reply_consumer(&address);
                }
                None
            }
        }
    }

    /// The consumer's queue was deleted: forget the consumer and tell the client.
    pub fn cancelled_by_broker(&mut self, io: &mut ConnIo<'_>, tag: ShortString, notify: bool) {
        if self.consumers.remove(&tag).is_some() && notify {
            let cancel = basic::Cancel {
                consumer_tag: tag,
                nowait: true,
            };
            self.reply(io, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
        }
    }

    fn get(&mut self, io: &mut ConnIo<'_>, g: basic::Get) -> AmqpResult {
        let name = self.queue_name(g.queue)?;
        io.grant.check(Op::Read, Kind::Queue, name.as_str())?;
        let q = io.vhost.queue(&name, io.conn)?;
        let Some((entry, message_count)) = q.get(g.no_ack) else {
            let empty = basic::GetEmpty {};
            self.reply(io, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(empty)));
            return Ok(());
        };
        let delivery_tag = self.next_tag();
        q.counters.delivered(entry.redelivered);
        let ok = basic::GetOk {
            delivery_tag,
            redelivered: entry.redelivered,
            exchange: entry.msg.exchange.clone(),
            routing_key: entry.msg.routing_key.clone(),
            message_count,
        };
        self.reply(io, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)));
        let counted = q.properties_for(&entry);
        io.out.content(
            self.id,
            counted.as_ref().unwrap_or(&entry.msg.properties),
            &entry.msg.body,
            io.frame_max,
        );
        if !g.no_ack {
            self.unacked.insert(
                delivery_tag,
                Unacked {
                    queue: q,
                    entry,
                    consumer: None,
                },
            );
        }
        Ok(())
    }

    fn next_tag(&mut self) -> u64 {
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        tag
    }

    /// Whether `consumer` is still subscribed on this channel.
    pub fn has_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        self.consumers
            .get(&consumer.tag)
            .is_some_and(|cc| Arc::ptr_eq(&cc.consumer, consumer))
    }

    /// Writes a delivery from a queue (or a direct reply) to the client.
    pub fn deliver(&mut self, io: &mut ConnIo<'_>, d: Delivery) {
        let delivery_tag = self.next_tag();
        let deliver = basic::Deliver {
            consumer_tag: d.consumer.tag.clone(),
            delivery_tag,
            redelivered: d.entry.redelivered,
            exchange: d.entry.msg.exchange.clone(),
            routing_key: d.entry.msg.routing_key.clone(),
        };
        io.out.deliver(self.id, &deliver);
        if let Some(q) = &d.queue {
            q.counters.delivered(d.entry.redelivered);
        }
        let counted = d.queue.as_ref().and_then(|q| q.properties_for(&d.entry));
        io.out.content(
            self.id,
            counted.as_ref().unwrap_or(&d.entry.msg.properties),
            &d.entry.msg.body,
            io.frame_max,
        );
        if let (true, Some(queue)) = (d.consumer.no_ack, &d.queue) {
            queue.delivered_without_ack(&d.entry);
        }
        if let (false, Some(queue)) = (d.consumer.no_ack, d.queue) {
            self.unacked.insert(
                delivery_tag,
                Unacked {
                    queue,
                    entry: d.entry,
                    consumer: Some(d.consumer),
                },
            );
        }
    }

    // ----- acknowledgements -----

    fn settle(&mut self, io: &mut ConnIo<'_>, s: Settle) -> AmqpResult {
        self.check_tag(s)?;
        if let Some(tx) = &mut self.tx {
            tx.settles.push(s);
            return Ok(());
        }
        self.apply_settle(io, s);
        Ok(())
    }

    /// 406 for a tag that is not unacked here, as RabbitMQ answers.
    fn check_tag(&self, s: Settle) -> AmqpResult {
        if (s.multiple && s.delivery_tag == 0) || self.unacked.contains_key(&s.delivery_tag) {
            return Ok(());
        }
        Err(AmqpError::precondition_failed(format_args!(
            "unknown delivery tag {}",
            s.delivery_tag
        )))
    }

    fn apply_settle(&mut self, io: &mut ConnIo<'_>, s: Settle) {
        let settled: Vec<Unacked> = if s.multiple {
            let upto = if s.delivery_tag == 0 {
                u64::MAX
            } else {
                s.delivery_tag
            };
            let rest = self.unacked.split_off(&upto.saturating_add(1));
            std::mem::replace(&mut self.unacked, rest)
                .into_values()
                .collect()
        } else {
            self.unacked.remove(&s.delivery_tag).into_iter().collect()
        };
        match s.reject {
            Some(true) => self.requeue(settled),
            reject => {
                // Acked, or rejected without requeue (dead-lettered if the queue says so).
                for u in &settled {
                    match reject {
                        None => u.queue.counters.acked.inc(),
                        Some(_) => io
                            .vhost
                            .dead_letter(&u.queue, &u.entry.msg, Reason::Rejected),
                    }
                    u.queue.settle(&u.entry);
                    if let Some(c) = &u.consumer {
                        c.release();
                    }
                }
                let mut queues: Vec<Arc<Queue>> = settled.into_iter().map(|u| u.queue).collect();
                queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
                for q in queues {
                    q.dispatch();
                }
                self.dispatch_all();
            }
        }
    }

    /// Gives deliveries back to their queues (in order, marked redelivered).
    fn requeue(&mut self, settled: Vec<Unacked>) {
        let mut by_queue: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
        for u in settled {
            if let Some(c) = &u.consumer {
                c.release();
            }
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, entries)) => entries.push(u.entry),
                None => by_queue.push((u.queue, vec![u.entry])),
            }
        }
        for (q, entries) in by_queue {
            q.requeue(entries, true);
        }
        self.dispatch_all();
    }

    fn requeue_all_unacked(&mut self) {
        let all = std::mem::take(&mut self.unacked).into_values().collect();
        self.requeue(all);
    }

    /// Lets every queue this channel consumes from deliver again (after credit was freed).
    fn dispatch_all(&self) {
        for cc in self.consumers.values() {
            if let Some(q) = &cc.queue {
                q.dispatch();
            }
        }
    }

    // ----- publishing -----

    fn publish(
        &mut self,
        io: &mut ConnIo<'_>,
        p: basic::Publish,
        mut properties: BasicProperties,
        body: BytesMut,
    ) -> AmqpResult {
        if let Some(claimed) = properties.user_id() {
            if claimed.as_str() != io.user {
                return Err(AmqpError::precondition_failed(format_args!(
                    "user_id property set to '{claimed}' but authenticated user was '{}'",
                    io.user
                ))
                .on(60, 40));
            }
        }
        if properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == REPLY_TO)
        {
            let Some(address) = &self.reply_address else {
                return Err(
                    AmqpError::precondition_failed("fast reply consumer does not exist").on(60, 40),
                );
            };
            properties = properties.with_reply_to(short(address.clone()));
        }
        // The confirm latency counts from here: the message is complete.
        let published_at = self.confirms.map(|_| Instant::now());
        let routed_by = RoutedBy {
            keys: routing_keys(p.routing_key.as_str(), properties.headers().as_ref()),
            headers: properties.headers().clone(),
        };
        let msg = Arc::new(Message {
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
            properties: without_bcc(properties),
            body: io.vhost.memory.track(body.freeze()),
        });
        if let Some(tx) = &mut self.tx {
            // Check the exchange now, as RabbitMQ does; route at commit.
            io.vhost
                .route(&p.exchange, &routed_by.keys, None)
                .map_err(|e| e.on(60, 40))?;
            tx.publishes.push((p, routed_by, msg));
            return Ok(());
        }
        let outcome = self.route_and_enqueue(io, &p, &routed_by, msg)?;
        let (Some(seq), Some(published_at)) = (&mut self.confirms, published_at) else {
            if outcome.store_failed {
                return Err(store_refuses(io).on(60, 40));
            }
            return Ok(());
        };
        *seq += 1;
        let delivery_tag = *seq;
        let accepted = outcome.accepted;
        match io.vhost.store() {
            Some(store) if outcome.stored || self.pending_confirms > 0 => {
                self.pending_confirms += 1;
                let (outbox, channel, epoch) = (io.outbox.clone(), self.id, self.epoch);
                store.after_sync(Box::new(move |synced| {
                    let _ = outbox.send(crate::queue::Outbound::Confirmed {
                        channel,
                        epoch,
                        delivery_tag,
                        ack: accepted && synced.is_ok(),
                        published_at,
                    });
                }));
            }
            _ => self.write_confirm(io, delivery_tag, accepted, published_at),
        }
        Ok(())
    }

    /// A confirm that waited for the store.
    pub fn confirmed(
        &mut self,
        io: &mut ConnIo<'_>,
        epoch: u64,
        delivery_tag: u64,
        ack: bool,
        published_at: Instant,
    ) {
        if epoch != self.epoch {
            return;
        }
        self.pending_confirms = self.pending_confirms.saturating_sub(1);
        self.write_confirm(io, delivery_tag, ack, published_at);
    }

    /// A `tx.commit` that waited for the store.
    pub fn committed(
        &mut self,
        io: &mut ConnIo<'_>,
        epoch: u64,
        result: Result<(), Arc<str>>,
    ) -> AmqpResult {
        if epoch != self.epoch {
            return Ok(());
        }
        if let Err(reason) = result {
            return Err(AmqpError::precondition_failed(format_args!(
                "the message store refuses writes: {reason}"
            ))
            .on(90, 20));
        }
        self.reply(io, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
        Ok(())
    }

    /// Writes `basic.ack` (or `nack`) for a publish completed at `published_at`.
    fn write_confirm(
        &mut self,
        io: &mut ConnIo<'_>,
        delivery_tag: u64,
        accepted: bool,
        published_at: Instant,
    ) {
        {
            let multiple = false;
            let confirm = if accepted {
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag,
                    multiple,
                })
            } else {
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag,
                    multiple,
                    requeue: false,
                })
            };
            io.out.method(self.id, &AMQPClass::Basic(confirm));
        }
        io.vhost
            .metrics
            .confirm_latency
            .observe(published_at.elapsed());
    }

    /// Routes a message and hands it to its queues; an unroutable mandatory message goes back to
    /// the publisher with `basic.return`.
    fn route_and_enqueue(
        &mut self,
        io: &mut ConnIo<'_>,
        p: &basic::Publish,
        routed_by: &RoutedBy,
        msg: Arc<Message>,
    ) -> AmqpResult<Outcome> {
        let key = p.routing_key.as_str();
        let (keys, headers) = (&routed_by.keys[..], routed_by.headers.as_ref());
        if let Some(delay) = io.vhost.delay_for(&p.exchange, headers) {
            // Held by the delayed exchange: routed when due (so never returned as unroutable,
            // as with the plugin).
            let scheduled = io.vhost.schedule_delayed(keys, &msg, delay);
            return Ok(Outcome {
                accepted: scheduled.is_ok(),
                stored: scheduled == Ok(true),
                store_failed: scheduled.is_err(),
            });
        }
        let mut outcome = Outcome {
            accepted: true,
            stored: false,
            store_failed: false,
        };
        let routed = if p.exchange.as_str().is_empty() && key.starts_with(REPLY_TO) {
            match io.vhost.reply_consumer(key) {
                Some(consumer) => {
                    let entry = QueuedMessage {
                        seq: 0,
                        redelivered: false,
                        msg: msg.clone(),
                        expires_at: None,
                        delivery_count: 0,
                    };
                    let out = consumer.outbox.clone();
                    out.send(crate::queue::Outbound::Deliver(Delivery {
                        consumer,
                        queue: None,
                        entry,
                    }))
                    .is_ok()
                }
                None => false,
            }
        } else {
            let route = io
                .vhost
                .route(&p.exchange, keys, headers)
                .map_err(|e| e.on(60, 40))?;
            let mut routed = false;
            for q in &route.queues {
                match q.publish(msg.clone()) {
                    Enqueued::Accepted => {
                        routed = true;
                        outcome.stored |= q.store_for(&msg).is_some();
                    }
                    Enqueued::Rejected => (routed, outcome.accepted) = (true, false),
                    Enqueued::StoreFailed => {
                        routed = true;
                        outcome.accepted = false;
                        outcome.store_failed = true;
                    }
                    Enqueued::Gone => {}
                }
            }
            routed
        };
        if !routed && p.mandatory {
            let ret = basic::Return {
                reply_code: reply::NO_ROUTE,
                reply_text: short("NO_ROUTE"),
                exchange: p.exchange.clone(),
                routing_key: p.routing_key.clone(),
            };
            io.out
                .method(self.id, &AMQPClass::Basic(basic::AMQPMethod::Return(ret)));
            io.out
                .content(self.id, &msg.properties, &msg.body, io.frame_max);
        }
        Ok(outcome)
    }

    // ----- transactions -----

    fn tx_method(&mut self, io: &mut ConnIo<'_>, m: tx::AMQPMethod) -> AmqpResult {
        use tx::AMQPMethod as M;
        match m {
            M::Select(_) => {
                if self.confirms.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Transaction::default);
                self.view.set_transactional();
                self.reply(io, AMQPClass::Tx(M::SelectOk(tx::SelectOk {})));
            }
            M::Commit(_) => {
                let Some(tx) = self.tx.replace(Transaction::default()) else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                let mut stored = false;
                for (p, routed_by, msg) in tx.publishes {
                    let outcome = self.route_and_enqueue(io, &p, &routed_by, msg)?;
                    if outcome.store_failed {
                        return Err(store_refuses(io));
                    }
                    stored |= outcome.stored;
                }
                for s in tx.settles {
                    self.apply_settle(io, s);
                }
                match io.vhost.store() {
                    Some(store) if stored => {
                        let (outbox, channel, epoch) = (io.outbox.clone(), self.id, self.epoch);
                        store.after_sync(Box::new(move |result| {
                            let _ = outbox.send(crate::queue::Outbound::Committed {
                                channel,
                                epoch,
                                result,
                            });
                        }));
                    }
                    _ => self.reply(io, AMQPClass::Tx(M::CommitOk(tx::CommitOk {}))),
                }
            }
            M::Rollback(_) => {
                if self.tx.replace(Transaction::default()).is_none() {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                }
                self.reply(io, AMQPClass::Tx(M::RollbackOk(tx::RollbackOk {})));
            }
            _ => return Err(AmqpError::command_invalid("unexpected tx method")),
        }
        Ok(())
    }

    // ----- closing -----

    /// Releases everything the channel holds: consumers are cancelled and unacked deliveries go
    /// back to their queues. Called when the channel or its connection closes, for any reason.
    pub fn close(&mut self, io: &mut ConnIo<'_>) {
        io.vhost.metrics.channels_closed.inc();
        let tags: Vec<ShortString> = self.consumers.keys().cloned().collect();
        let queues: Vec<Arc<Queue>> = tags.iter().filter_map(|t| self.cancel(io, t)).collect();
        self.content = Content::Idle;
        self.tx = None;
        // Unacked messages go back before the remaining consumers are served, so a consumer
        // that takes over (single active consumer) sees them first, in order.
        self.requeue_all_unacked();
        for q in queues {
            q.dispatch();
        }
    }
}

/// 406 for a persistent message that durable queues cannot take: the store refuses writes.
/// A string argument (short or long string), as RabbitMQ reads exchange names from arguments.
fn string_arg(arguments: &amq_protocol::types::FieldTable, key: &str) -> Option<String> {
    use amq_protocol::types::AMQPValue;
    match arguments.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A binding (queue.bind/unbind, exchange.bind/unbind) needs write on its destination and read
/// on its source exchange, checked in that order as RabbitMQ does.
fn check_binding(
    io: &ConnIo<'_>,
    kind: Kind,
    destination: &ShortString,
    source: &ShortString,
) -> AmqpResult {
    io.grant.check(Op::Write, kind, destination.as_str())?;
    if source.as_str().is_empty() {
        // Refused as the default exchange (by the vhost) before any read check, as RabbitMQ.
        return Ok(());
    }
    io.grant.check(Op::Read, Kind::Exchange, source.as_str())
}

fn store_refuses(io: &ConnIo<'_>) -> AmqpError {
    let reason = io
        .vhost
        .store()
        .and_then(|s| s.failure())
        .unwrap_or_else(|| "unknown".into());
    AmqpError::precondition_failed(format_args!(
        "the message store refuses writes after a failure ({reason}); persistent messages to \
         durable queues are not accepted"
    ))
}

/// `x-priority` from `basic.consume`'s arguments (default 0; 406 for a non-integer, as
/// RabbitMQ answers).
fn consumer_priority(arguments: &amq_protocol::types::FieldTable) -> AmqpResult<i32> {
    match arguments.inner().get("x-priority") {
        None => Ok(0),
        Some(v) => crate::queue::integer(v)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                AmqpError::precondition_failed(format_args!(
                    "invalid arg 'x-priority': {v:?} is not an integer"
                ))
            }),
    }
}

/// A message's properties without the `BCC` header, which RabbitMQ strips after routing.
fn without_bcc(properties: BasicProperties) -> BasicProperties {
    match properties.headers() {
        Some(h) if h.contains_key("BCC") => {
            let mut kept = amq_protocol::types::FieldTable::default();
            for (k, v) in h.inner().iter().filter(|(k, _)| k.as_str() != "BCC") {
                kept.insert(k.clone(), v.clone());
            }
            properties.clone().with_headers(kept)
        }
        _ => properties,
    }
}

/// Whether a queue name is direct reply-to's (the pseudo-queue or one of its addresses).
fn is_reply_to(name: &ShortString) -> bool {
    name.as_str() == REPLY_TO || name.as_str().starts_with(&format!("{REPLY_TO}."))
}
