//! Listener containers: consume a queue, hand each message to an async handler, and let the
//! handler's result decide the acknowledgement.
//!
//! ```text
//! Ok(reply)          → reply sent to reply_to (unless the handler returns ()) → ack
//! Err(e)             → reject without requeue (to the queue's dead-letter exchange, if any),
//!                      or requeue when e says so (ListenerError::requeue)
//!   with .retry(…)   → re-published with a delay (attempts in x-retry-attempt), then acked;
//!                      to <queue>.dlq when spent or permanent (retry.rs)
//! body won't decode  → reject without requeue, logged with queue, message id and serde error
//!                      (with .retry(…): to <queue>.dlq)
//! handler panics     → treated as Err; the container keeps running
//! ```
//!
//! `concurrency(n)` starts n consumers on the queue, each on its own channel, each handling its
//! deliveries one at a time. That is Spring's `concurrentConsumers`, and it is what makes the
//! broker's fair dispatch work: with `prefetch(1)` a consumer gets its next message only after
//! acking the last one, so a fast consumer takes more of the work than a slow one. (Running n
//! handlers on one consumer would instead tie every message to that consumer's prefetch window
//! and give up per-consumer ordering.)

mod handler;
pub(crate) mod metrics;
mod retry;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use self::handler::{Acker, Disposition, ErrorDisposition, ListenerError};
use crate::breaker::{Breaker, CircuitBreaker};
use crate::connection::Connection;
use crate::converter::{JsonConverter, MessageConverter};
use crate::declare::Queue;
use crate::error::Result;
use crate::extract::{HandlerFn, StateMap};
use crate::health::{ListenerHealth, ListenerStatus};
use crate::idempotent::Idempotency;
use crate::message::Metadata;
use crate::rate::{Rate, TokenBucket};
use crate::retry::Retry;

/// How deliveries are acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckMode {
    /// The container acks after the handler returns `Ok`, rejects after `Err` (the default).
    #[default]
    Auto,
    /// The handler acks through [`Metadata::acker`]; the container never does.
    Manual,
    /// The broker considers a message handled once sent (`no_ack`): at most once.
    None,
}

/// Settings for a listener, before its handler is given. Start with [`Listener::on`].
#[derive(Debug)]
pub struct ListenerBuilder<C = JsonConverter> {
    queue: String,
    /// The name in metrics and health checks; the queue's when not given.
    id: Option<String>,
    prefetch: u16,
    concurrency: usize,
    ack_mode: AckMode,
    shutdown_timeout: Duration,
    converter: C,
    state: StateMap,
    idempotency: Option<Idempotency>,
    rate: Option<Rate>,
    circuit_breaker: Option<CircuitBreaker>,
    retry: Option<Retry>,
    /// Consume `<queue>.0` … `<queue>.N-1` instead of `queue` (ordered partitions).
    partitions: Option<u16>,
    /// The consumed queue is a quorum queue, so the dead-letter queue declared for it is too.
    quorum: bool,
}

/// A queue with a handler, ready to [`start`](Listener::start).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
/// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
/// use amqp_core::{Connection, Listener, ListenerError, Queue, Template};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Login { user: String }
///
/// let conn = Connection::connect(&broker.amqp_url()).await?;
/// conn.declare(Queue::durable("login.log")).await?;
/// let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
/// let listener = Listener::on("login.log")
///     .prefetch(10)
///     .handler(move |login: Login| {
///         let seen_tx = seen_tx.clone();
///         async move {
///             seen_tx.send(login.user).map_err(ListenerError::reject)?;
///             Ok::<_, ListenerError>(())
///         }
///     })
///     .start(&conn)
///     .await?;
/// Template::new(conn.clone()).convert_and_send("", "login.log", &Login { user: "ann".into() }).await?;
/// assert_eq!(seen.recv().await.as_deref(), Some("ann"));
/// listener.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Listener<C = JsonConverter> {
    settings: ListenerBuilder<C>,
    handler: HandlerFn,
}

impl<C: std::fmt::Debug> std::fmt::Debug for Listener<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Listener<JsonConverter> {
    /// Begins a listener on `queue` with Spring's defaults: prefetch 250, one consumer, auto ack,
    /// JSON.
    pub fn on(queue: impl Into<String>) -> ListenerBuilder<JsonConverter> {
        ListenerBuilder {
            queue: queue.into(),
            id: None,
            prefetch: 250,
            concurrency: 1,
            ack_mode: AckMode::Auto,
            shutdown_timeout: Duration::from_secs(30),
            converter: JsonConverter,
            state: StateMap::default(),
            idempotency: None,
            rate: None,
            circuit_breaker: None,
            retry: None,
            partitions: None,
            quorum: false,
        }
    }
}

impl<C: MessageConverter + Clone> ListenerBuilder<C> {
    /// The listener's name in metrics (the `listener` label) and health checks (default: the
    /// queue's name; `App` uses the `#[rabbit_listener]` function's path).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// How many unacknowledged messages each consumer may hold (0: unlimited).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// How many consumers (each on its own channel, handling one message at a time).
    pub fn concurrency(mut self, consumers: usize) -> Self {
        self.concurrency = consumers.max(1);
        self
    }

    /// How messages are acknowledged (default [`AckMode::Auto`]).
    pub fn ack_mode(mut self, mode: AckMode) -> Self {
        self.ack_mode = mode;
        self
    }

    /// How long [`ListenerHandle::shutdown`] lets in-flight handlers run (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Converts bodies with another converter.
    pub fn converter<C2: MessageConverter + Clone>(self, converter: C2) -> ListenerBuilder<C2> {
        ListenerBuilder {
            queue: self.queue,
            id: self.id,
            prefetch: self.prefetch,
            concurrency: self.concurrency,
            ack_mode: self.ack_mode,
            shutdown_timeout: self.shutdown_timeout,
            converter,
            state: self.state,
            idempotency: self.idempotency,
            rate: self.rate,
            circuit_breaker: self.circuit_breaker,
            retry: self.retry,
            partitions: self.partitions,
            quorum: self.quorum,
        }
    }

    /// Handles each `message_id` once: a delivery whose id is done already is acknowledged
    /// without calling the handler (see [`crate::idempotent`] for the guarantees). Not with
    /// [`AckMode::None`], where a busy message could not be requeued.
    pub fn idempotent(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// Handles at most `rate` messages, across all consumers of this listener (a token bucket;
    /// see [`Rate`]). The backlog waits in the queue; prefetch and concurrency still bound what
    /// is in flight.
    ///
    /// ```
    /// # use amqp_core::{Listener, Rate};
    /// let builder = Listener::on("emails").rate("200/s".parse::<Rate>().unwrap());
    /// # let _ = builder;
    /// ```
    pub fn rate(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Stops consuming for a cool-down when too many deliveries fail (see [`CircuitBreaker`]).
    /// Pausing cancels the consumers, so the queue must not be auto-delete (it would be deleted
    /// with its messages).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.circuit_breaker = Some(breaker);
        self
    }

    /// Retries failed deliveries with back-off through the broker (see [`crate::retry`]): the
    /// failed message is re-published with a delay and the attempt count in the
    /// `x-retry-attempt` header, then acked, so the queue keeps flowing meanwhile. When the
    /// attempts are spent, or the error is permanent ([`ListenerError::reject`], a body that does
    /// not convert), the message goes to `<queue>.dlq` (declared when the listener starts) with
    /// the error in headers. [`ListenerError::requeue`] still requeues at once. With
    /// [`partitions`](Self::partitions), each partition `<queue>.<p>` has its own
    /// `<queue>.<p>.dlq`, and a retried message comes back to its partition after the delay
    /// (behind the messages that arrived meanwhile: retries give up that key's order).
    ///
    /// Needs [`AckMode::Auto`]. Each re-publish waits for its publisher confirm before the ack,
    /// so a message is never lost between the two (a crash in between may duplicate it).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use amqp_core::{Listener, Retry};
    /// let builder = Listener::on("payments").retry(
    ///     Retry::attempts(5)
    ///         .initial(Duration::from_millis(100))
    ///         .multiplier(2.0)
    ///         .max(Duration::from_secs(10)),
    /// );
    /// # let _ = builder;
    /// ```
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Consumes the `n` partitions of the queue, `<queue>.0` … `<queue>.<n-1>`, one consumer each
    /// (see [`crate::Partitions`]). With single-active-consumer queues
    /// ([`crate::Partitions::queues`] declares them so), each partition is handled by one process
    /// at a time, in order, and a standby process takes over when it dies. Not with a
    /// `concurrency` above 1: a partition's second consumer would only stand by.
    ///
    /// ```
    /// # use amqp_core::Listener;
    /// let builder = Listener::on("accounts").partitions(4).prefetch(50);
    /// # let _ = builder;
    /// ```
    pub fn partitions(mut self, n: u16) -> Self {
        self.partitions = Some(n);
        self
    }

    /// Says the consumed queue is a quorum queue ([`crate::Queue::quorum`]): the dead-letter
    /// queue this listener declares with a [`retry`](Self::retry) policy, `<queue>.dlq`, is then
    /// a quorum queue too, so failed messages are replicated like the rest. (The retry wait
    /// queues of [`crate::DelayMechanism::WaitQueues`] stay classic: each holds a message only
    /// for one delay, is made per delay value and expires unused, which a replicated queue
    /// would turn into a Raft group created and dropped on the fly; their messages are
    /// persistent and come back when their node does.)
    pub fn quorum(mut self) -> Self {
        self.quorum = true;
        self
    }

    /// Shares state with extractor-based handlers ([`crate::State`]).
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Replaces all shared state at once.
    pub fn state_map(mut self, state: StateMap) -> Self {
        self.state = state;
        self
    }

    /// A handler that takes the whole [`crate::Delivery`] (what `#[rabbit_listener]` generates).
    pub fn delivery_handler(self, handler: HandlerFn) -> Listener<C> {
        Listener {
            settings: self,
            handler,
        }
    }

    /// Handles each message as a `T`. Returning a value other than `()` sends it to the
    /// message's `reply_to` (an RPC server is one handler).
    pub fn handler<T, R, E, F, Fut>(self, f: F) -> Listener<C>
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<ListenerError> + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<R, E>> + Send + 'static,
    {
        self.handler_with_metadata(move |payload: T, _meta: Metadata| f(payload))
    }

    /// Like [`handler`](Self::handler), with the delivery's [`Metadata`] (properties, headers,
    /// routing key, redelivered, and in manual mode the acker).
    pub fn handler_with_metadata<T, R, E, F, Fut>(self, f: F) -> Listener<C>
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<ListenerError> + Send + 'static,
        F: Fn(T, Metadata) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<R, E>> + Send + 'static,
    {
        let handler = handler::erase(self.converter.clone(), f);
        Listener {
            settings: self,
            handler,
        }
    }
}

impl<C: MessageConverter + Clone> Listener<C> {
    /// Starts the consumers. Returns once each has subscribed, or with the error that stopped
    /// the first subscription (a missing queue, say). From then on consumers re-subscribe by
    /// themselves after a reconnection.
    pub async fn start(self, conn: &Connection) -> Result<ListenerHandle> {
        if self.settings.idempotency.is_some() && self.settings.ack_mode == AckMode::None {
            return Err(crate::Error::Configuration(format!(
                "listener on '{}': an idempotent listener needs acknowledgements (AckMode::Auto or Manual), not AckMode::None",
                self.settings.queue
            )));
        }
        let queues = self.queues()?;
        if let Some(retry) = &self.settings.retry {
            let queue = &self.settings.queue;
            if self.settings.ack_mode != AckMode::Auto {
                return Err(crate::Error::Configuration(format!(
                    "listener on '{queue}': retry needs AckMode::Auto (the container acks after re-publishing)"
                )));
            }
            retry.check().map_err(|e| {
                crate::Error::Configuration(format!("listener on '{queue}': retry: {e}"))
            })?;
            for q in &queues {
                let dlq = Queue::durable(crate::retry::dead_letter_queue(q));
                conn.declare(if self.settings.quorum {
                    dlq.quorum()
                } else {
                    dlq
                })
                .await?;
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = Arc::new(self.settings.state.clone());
        let replies = crate::Template::new(conn.clone());
        // Shared by every consumer, of every partition.
        let rate = self.settings.rate.map(|r| Arc::new(TokenBucket::new(r)));
        let breaker = self
            .settings
            .circuit_breaker
            .map(|b| Arc::new(Breaker::new(b)));
        let consumers = queues.len() * self.settings.concurrency;
        let id = self
            .settings
            .id
            .clone()
            .unwrap_or_else(|| self.settings.queue.clone());
        let status = Arc::new(ListenerStatus::new(
            id.clone(),
            self.settings.queue.clone(),
            consumers,
        ));
        let mut workers = Vec::with_capacity(consumers);
        let mut ready = Vec::with_capacity(consumers);
        for queue in queues {
            let ctx = Arc::new(worker::Context {
                metrics: metrics::ListenerMetrics::new(&id, &queue),
                status: status.clone(),
                queue,
                prefetch: self.settings.prefetch,
                ack_mode: self.settings.ack_mode,
                handler: self.handler.clone(),
                state: state.clone(),
                conn: conn.clone(),
                replies: replies.clone(),
                idempotency: self.settings.idempotency.clone(),
                rate: rate.clone(),
                breaker: breaker.clone(),
                retry: self.settings.retry,
            });
            for _ in 0..self.settings.concurrency {
                let (tx, rx) = oneshot::channel();
                workers.push(tokio::spawn(worker::run(ctx.clone(), tx, stop_rx.clone())));
                ready.push(rx);
            }
        }
        let handle = ListenerHandle {
            queue: self.settings.queue,
            stop: stop_tx,
            workers,
            shutdown_timeout: self.settings.shutdown_timeout,
            status,
        };
        for rx in ready {
            let outcome = rx.await.unwrap_or(Err(crate::Error::Closed));
            if let Err(e) = outcome {
                handle.shutdown().await;
                return Err(e);
            }
        }
        Ok(handle)
    }

    /// The queues to consume: the queue, or its partitions.
    fn queues(&self) -> Result<Vec<String>> {
        let settings = &self.settings;
        let Some(n) = settings.partitions else {
            return Ok(vec![settings.queue.clone()]);
        };
        let partitions = crate::Partitions::new(n).map_err(|e| {
            crate::Error::Configuration(format!("listener on '{}': {e}", settings.queue))
        })?;
        if settings.concurrency > 1 {
            return Err(crate::Error::Configuration(format!(
                "listener on '{}': each of its {n} partitions has a single active consumer, so a concurrency of {} would only add idle consumers; raise the number of partitions instead",
                settings.queue, settings.concurrency
            )));
        }
        Ok(partitions.queue_names(&settings.queue))
    }
}

/// A running listener. [`shutdown`](Self::shutdown) stops it gracefully; dropping it stops the
/// consumers too, without waiting.
#[derive(Debug)]
pub struct ListenerHandle {
    queue: String,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    shutdown_timeout: Duration,
    /// How many consumers are subscribed (see [`crate::HealthCheck`]).
    status: Arc<ListenerStatus>,
}

impl ListenerHandle {
    /// The queue this listener consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether every consumer is subscribed now (false while the connection recovers, or while
    /// a circuit breaker holds it paused).
    pub fn health(&self) -> ListenerHealth {
        self.status.health()
    }

    pub(crate) fn status(&self) -> Arc<ListenerStatus> {
        self.status.clone()
    }

    /// Stops consuming, lets in-flight handlers finish (up to the shutdown timeout) and ack, then
    /// closes the channels. Messages not yet handled stay in the broker (prefetched ones are
    /// requeued when their channel closes).
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        let workers = std::mem::take(&mut self.workers);
        let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
        let all = futures::future::join_all(workers);
        if tokio::time::timeout(self.shutdown_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!(queue = %self.queue, "handlers still running after {:?}; abandoning them", self.shutdown_timeout);
            for a in aborts {
                a.abort();
            }
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
