//! [`Template`]: send and receive with conversion, publisher confirms, returns, and
//! request/reply, the way Spring's `RabbitTemplate` does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connection::Connection;
use crate::converter::{JsonConverter, MessageConverter};
use crate::delay::Target;
use crate::error::{Error, Result, is_connection_loss, reply_code};
use crate::message::{Message, TYPE_ID_HEADER};

/// AMQP's reply code for a missing exchange or queue.
const NOT_FOUND: u16 = 404;

/// The header that tells a delayed-message exchange how long to hold a message (ms).
const X_DELAY: &str = "x-delay";

/// The pseudo-queue of RabbitMQ's direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Sends and receives messages. Cheap to clone; clones share channels.
///
/// Every send waits for the broker's publisher confirm, so a returned `Ok` means the broker
/// has the message. Sends from many tasks at once share one channel and pipeline their
/// confirms.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
/// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
/// use std::time::Duration;
/// use amqp_core::{Connection, Queue, Template};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64 }
///
/// let conn = Connection::connect(&broker.amqp_url()).await?;
/// conn.declare(Queue::durable("orders")).await?;
/// let template = Template::new(conn);
/// template.convert_and_send("", "orders", &Order { id: 1 }).await?;
/// let got: Option<Order> = template.receive_and_convert("orders", Duration::from_secs(1)).await?;
/// assert_eq!(got, Some(Order { id: 1 }));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Template<C: MessageConverter = JsonConverter> {
    inner: Arc<Inner<C>>,
}

impl<C: MessageConverter> Clone for Template<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<C> {
    conn: Connection,
    converter: C,
    confirm_timeout: Duration,
    mandatory: bool,
    /// The confirm-mode channel sends go through (re-opened after a reconnection).
    publisher: tokio::sync::Mutex<Option<lapin::Channel>>,
    /// The request/reply channel and its reply consumer.
    rpc: tokio::sync::Mutex<Option<Rpc>>,
}

/// A channel consuming direct reply-to, and the requests waiting on it.
#[derive(Debug)]
struct Rpc {
    channel: lapin::Channel,
    pending: Pending,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

impl Template<JsonConverter> {
    /// A template that converts with JSON.
    pub fn new(conn: Connection) -> Self {
        Self::with_converter(conn, JsonConverter)
    }
}

impl<C: MessageConverter> Template<C> {
    /// A template with another converter.
    pub fn with_converter(conn: Connection, converter: C) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                converter,
                confirm_timeout: Duration::from_secs(10),
                mandatory: false,
                publisher: tokio::sync::Mutex::new(None),
                rpc: tokio::sync::Mutex::new(None),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner<C>)) -> Self
    where
        C: Clone,
    {
        let inner = &*self.inner;
        let mut fresh = Inner {
            conn: inner.conn.clone(),
            converter: inner.converter.clone(),
            confirm_timeout: inner.confirm_timeout,
            mandatory: inner.mandatory,
            publisher: tokio::sync::Mutex::new(None),
            rpc: tokio::sync::Mutex::new(None),
        };
        f(&mut fresh);
        Self {
            inner: Arc::new(fresh),
        }
    }

    /// Sends with the `mandatory` flag: a message no queue takes comes back as
    /// [`Error::Returned`] instead of being dropped (default: off, as in Spring).
    pub fn mandatory(self, mandatory: bool) -> Self
    where
        C: Clone,
    {
        self.rebuild(|i| i.mandatory = mandatory)
    }

    /// How long a send waits for its publisher confirm (default 10 s).
    pub fn confirm_timeout(self, timeout: Duration) -> Self
    where
        C: Clone,
    {
        self.rebuild(|i| i.confirm_timeout = timeout)
    }

    /// How many requests are waiting for their replies right now (0 when every
    /// [`send_and_receive`](Self::send_and_receive) has returned, however it ended).
    pub fn pending_requests(&self) -> usize {
        match self.inner.rpc.try_lock() {
            Ok(slot) => slot.as_ref().map_or(0, |rpc| rpc.pending.lock().len()),
            // Someone is opening the reply channel: nothing can be pending on it yet.
            Err(_) => 0,
        }
    }

    /// The connection this template uses.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// The converter this template uses.
    pub fn converter(&self) -> &C {
        &self.inner.converter
    }

    /// Converts `payload` and sends it: `content_type` from the converter, the type's name in the
    /// `__TypeId__` header, a fresh `message_id`, a `timestamp`, and persistent delivery.
    pub async fn convert_and_send<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &T,
    ) -> Result<()> {
        let message = self.message_for(payload)?;
        self.send(exchange, routing_key, message).await
    }

    /// Sends a message as it is (made persistent unless its delivery mode says otherwise) and
    /// waits for the broker's confirm.
    pub async fn send(&self, exchange: &str, routing_key: &str, message: Message) -> Result<()> {
        self.send_with(exchange, routing_key, message, self.inner.mandatory)
            .await
    }

    /// Converts `payload` (as [`convert_and_send`](Self::convert_and_send) does, persistent by
    /// default) and has the broker deliver it to `exchange` with `routing_key` once `delay` has
    /// passed (to about 100 ms). `Ok` means the broker holds the message (publisher confirm).
    ///
    /// The connection's [`DelayMechanism`](crate::DelayMechanism) says how it waits: in the
    /// broker's `x-delayed-message` exchange when it has one, or else in a TTL wait queue per
    /// distinct delay (and exchange) that dead-letters to `exchange` with the message's own
    /// routing key (the names are listed there). Either way the wait happens in
    /// the broker, so a persistent message waiting in a durable wait queue survives a broker
    /// restart, and the sender may exit.
    ///
    /// Delays longer than about 49.7 days (2³² − 1 ms, the brokers' limit) are refused. The
    /// template's `mandatory` flag does not apply: a delayed message is routed when it is due.
    /// With the delayed exchange, sending to the default exchange binds the target queue to
    /// `amqp-core.delayed`, so that queue must exist (404 otherwise).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
    /// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
    /// use std::time::{Duration, Instant};
    /// use amqp_core::{Connection, Queue, Template};
    ///
    /// let conn = Connection::connect(&broker.amqp_url()).await?;
    /// conn.declare(Queue::durable("payment.checks")).await?;
    /// let template = Template::new(conn);
    /// let sent = Instant::now();
    /// template
    ///     .convert_and_send_delayed("", "payment.checks", &42, Duration::from_millis(300))
    ///     .await?;
    /// let got: Option<i32> = template.receive_and_convert("payment.checks", Duration::from_secs(5)).await?;
    /// assert_eq!(got, Some(42));
    /// assert!(sent.elapsed() >= Duration::from_millis(300));
    /// # Ok(()) }
    /// ```
    pub async fn convert_and_send_delayed<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &T,
        delay: Duration,
    ) -> Result<()> {
        let message = self.message_for(payload)?;
        self.send_delayed(exchange, routing_key, message, delay)
            .await
    }

    /// [`convert_and_send_delayed`](Self::convert_and_send_delayed) for a message as it is.
    pub async fn send_delayed(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
        delay: Duration,
    ) -> Result<()> {
        if delay > crate::retry::MAX_DELAY {
            return Err(Error::Configuration(format!(
                "a delay of {delay:?} for exchange '{exchange}', routing key '{routing_key}' is longer than brokers allow ({:?})",
                crate::retry::MAX_DELAY
            )));
        }
        let target = Target::Send {
            exchange,
            routing_key,
        };
        self.send_via_delay(target, message, delay).await
    }

    /// Publishes `message` to go where `target` says after `delay`.
    pub(crate) async fn send_via_delay(
        &self,
        target: Target<'_>,
        mut message: Message,
        delay: Duration,
    ) -> Result<()> {
        let conn = &self.inner.conn;
        let route = conn.delays().route(conn, target, delay).await?;
        if let Some(ms) = route.x_delay {
            let mut headers = message.properties.headers().clone().unwrap_or_default();
            headers.insert(X_DELAY.into(), AMQPValue::LongLongInt(ms));
            message.properties = message.properties.with_headers(headers);
        }
        // A wait queue always takes the message, so mandatory tells us at once if it is gone
        // (the delayed-message plugin does not support mandatory: it routes later).
        let mandatory = route.x_delay.is_none();
        let sent = self
            .send_with(
                &route.exchange,
                &route.routing_key,
                message.clone(),
                mandatory,
            )
            .await;
        let gone = match &sent {
            Err(Error::Publish { source, .. }) => reply_code(source) == Some(NOT_FOUND),
            Err(Error::Returned { .. }) => true,
            _ => false,
        };
        if !gone {
            return sent;
        }
        // The wait queue or exchange went away behind our back (deleted, or not durable across
        // a broker restart): declare it again and publish once more.
        conn.delays().forget(&route);
        let route = conn.delays().route(conn, target, delay).await?;
        self.send_with(&route.exchange, &route.routing_key, message, mandatory)
            .await
    }

    /// [`send`](Self::send) with the `mandatory` flag given (partitioned sends always set it).
    pub(crate) async fn send_with(
        &self,
        exchange: &str,
        routing_key: &str,
        mut message: Message,
        mandatory: bool,
    ) -> Result<()> {
        if message.properties.delivery_mode().is_none() {
            message.properties = message.properties.with_delivery_mode(2);
        }
        // A send that the connection's loss interrupted goes again on the next connection, until
        // the outage outlasts the wait. (The broker may have had the first copy: at least once.)
        let deadline = Instant::now() + self.inner.conn.unreachable_wait();
        loop {
            let channel = self.publisher(deadline).await?;
            match self
                .publish_on(&channel, exchange, routing_key, &message, mandatory)
                .await
            {
                Err(Error::Publish { source, .. }) if is_connection_loss(&source) => {
                    if Instant::now() >= deadline {
                        return Err(self
                            .inner
                            .conn
                            .unreachable(self.inner.conn.unreachable_wait()));
                    }
                    tracing::debug!(
                        exchange,
                        routing_key,
                        "send interrupted, retrying: {source}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Takes one message from `queue` (`basic.get`, acknowledged on receipt), polling until one
    /// arrives or `timeout` passes.
    pub async fn receive(&self, queue: &str, timeout: Duration) -> Result<Option<Message>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let channel = self
                .publisher(Instant::now() + self.inner.conn.unreachable_wait())
                .await?;
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await?;
            if let Some(got) = got {
                let d = got.delivery;
                return Ok(Some(Message {
                    body: d.data,
                    properties: d.properties,
                }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`receive`](Self::receive), then converts the body.
    pub async fn receive_and_convert<T: DeserializeOwned>(
        &self,
        queue: &str,
        timeout: Duration,
    ) -> Result<Option<T>> {
        match self.receive(queue, timeout).await? {
            Some(m) => Ok(Some(self.payload_of(&m)?)),
            None => Ok(None),
        }
    }

    /// Sends a request and waits up to `timeout` for the reply, over direct reply-to. The request
    /// is mandatory: if no queue takes it, the error comes at once rather than at the timeout.
    pub async fn send_and_receive(
        &self,
        exchange: &str,
        routing_key: &str,
        mut request: Message,
        timeout: Duration,
    ) -> Result<Message> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        request.properties = request
            .properties
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into());
        let (channel, pending) = self.rpc().await?;
        let (tx, rx) = oneshot::channel();
        pending.lock().insert(correlation_id.clone(), tx);
        // Whatever happens next, the entry goes: no leaked waiters.
        let _guard = RemoveOnDrop {
            pending: &pending,
            key: &correlation_id,
        };
        self.publish_on(&channel, exchange, routing_key, &request, true)
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::ReplyLost {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
            Err(_) => Err(Error::ReplyTimeout {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                timeout,
            }),
        }
    }

    /// Converts a request, sends it, waits for the reply and converts that.
    pub async fn convert_send_and_receive<Req, Resp>(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let message = self.message_for(request)?;
        let reply = self
            .send_and_receive(exchange, routing_key, message, timeout)
            .await?;
        self.payload_of(&reply)
    }

    /// A converted message with the template's default properties.
    pub(crate) fn message_for<T: Serialize + ?Sized>(&self, payload: &T) -> Result<Message> {
        let body = self.inner.converter.serialize(payload)?;
        let mut headers = FieldTable::default();
        headers.insert(
            TYPE_ID_HEADER.into(),
            AMQPValue::LongString(std::any::type_name::<T>().into()),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let properties = BasicProperties::default()
            .with_content_type(self.inner.converter.content_type().into())
            .with_headers(headers)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_timestamp(now)
            .with_delivery_mode(2);
        Ok(Message { body, properties })
    }

    /// Converts a message's body.
    pub(crate) fn payload_of<T: DeserializeOwned>(&self, m: &Message) -> Result<T> {
        let content_type = m
            .properties
            .content_type()
            .as_ref()
            .map(ShortString::as_str);
        self.inner.converter.deserialize(&m.body, content_type)
    }

    /// The confirm channel, opened (or re-opened after an outage) on demand.
    async fn publisher(&self, deadline: Instant) -> Result<lapin::Channel> {
        let mut slot = self.inner.publisher.lock().await;
        if let Some(ch) = slot.as_ref().filter(|ch| ch.status().connected()) {
            return Ok(ch.clone());
        }
        let (ch, _) = self.inner.conn.channel_by(deadline).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// The request/reply channel with its reply consumer, opened on demand.
    async fn rpc(&self) -> Result<(lapin::Channel, Pending)> {
        let mut slot = self.inner.rpc.lock().await;
        if let Some(rpc) = slot.as_ref().filter(|r| r.channel.status().connected()) {
            return Ok((rpc.channel.clone(), rpc.pending.clone()));
        }
        let (ch, _) = self.inner.conn.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let opts = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut replies = ch
            .basic_consume(REPLY_TO.into(), "".into(), opts, FieldTable::default())
            .await?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.to_string());
                let waiter = id.as_ref().and_then(|id| waiting.lock().remove(id));
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(Message {
                            body: d.data,
                            properties: d.properties,
                        });
                    }
                    None => {
                        tracing::warn!(correlation_id = ?id, "dropping a reply nobody waits for (late or unknown)")
                    }
                }
            }
            // The channel is gone: wake the waiters so they fail now, not at their timeout.
            waiting.lock().clear();
        });
        *slot = Some(Rpc {
            channel: ch.clone(),
            pending: pending.clone(),
        });
        Ok((ch, pending))
    }

    async fn publish_on(
        &self,
        channel: &lapin::Channel,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        mandatory: bool,
    ) -> Result<()> {
        let publish_error = |source: lapin::Error| Error::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            source: Box::new(source),
        };
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &message.body,
                message.properties.clone(),
            )
            .await
            .map_err(publish_error)?;
        let confirmation = match tokio::time::timeout(self.inner.confirm_timeout, confirm).await {
            Ok(result) => result.map_err(publish_error)?,
            Err(_) => {
                return Err(Error::ConfirmTimeout {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                    timeout: self.inner.confirm_timeout,
                });
            }
        };
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(Error::Returned {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Err(Error::Nacked {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
        }
    }
}

/// Removes a pending request when the caller stops waiting, however that happens.
struct RemoveOnDrop<'a> {
    pending: &'a Pending,
    key: &'a str,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(self.key);
    }
}
