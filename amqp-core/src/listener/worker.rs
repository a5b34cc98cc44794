//! One consumer of a listener: subscribe, handle deliveries one at a time, acknowledge by the
//! outcome, and subscribe again after a reconnection, until told to stop.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::handler::Acker;
use super::metrics::{Fate, ListenerMetrics};
use super::{AckMode, retry};
use crate::breaker::Breaker;
use crate::connection::Connection;
use crate::error::Result;
use crate::extract::{Delivery, HandlerFn, Outcome, StateMap};
use crate::health::ListenerStatus;
use crate::idempotent::{self, Claim, Idempotency};
use crate::message::{Message, Metadata};
use crate::rate::TokenBucket;
use crate::retry::Retry;
use crate::template::Template;

/// What every consumer of one listener shares.
pub(crate) struct Context {
    pub queue: String,
    pub prefetch: u16,
    pub ack_mode: AckMode,
    pub handler: HandlerFn,
    /// Shared with extractor-based handlers.
    pub state: Arc<StateMap>,
    pub conn: Connection,
    /// Sends handlers' replies.
    pub replies: Template,
    /// Deduplication by message id, if the listener is idempotent.
    pub idempotency: Option<Idempotency>,
    /// The rate limit shared by the listener's consumers (of all its partitions).
    pub rate: Option<Arc<TokenBucket>>,
    /// The circuit breaker shared by the listener's consumers (of all its partitions).
    pub breaker: Option<Arc<Breaker>>,
    /// Failed deliveries are re-published with back-off, then go to `<queue>.dlq`.
    pub retry: Option<Retry>,
    /// This queue's counters, gauge and histogram.
    pub metrics: ListenerMetrics,
    /// The listener's subscribed consumers, for health checks.
    pub status: Arc<ListenerStatus>,
}

/// How one subscription ended.
enum Ended {
    /// Told to stop.
    Stop,
    /// The consumer or its connection went away.
    Lost,
    /// The circuit breaker opened: paused until then.
    Paused(tokio::time::Instant),
}

/// How long to wait before subscribing again when the connection is up but the subscription
/// ended (its queue was deleted, say).
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    ctx: Arc<Context>,
    ready: oneshot::Sender<Result<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ready = Some(ready);
    // Generations already consumed on; 0 lets the first wait take any connection.
    let mut seen = 0;
    loop {
        let link = tokio::select! {
            link = ctx.conn.next_link(seen) => link,
            _ = stopped(&mut stop) => None,
        };
        let Some((conn, generation)) = link else {
            return;
        };
        let subscribed = subscribe(&ctx, &conn).await;
        let (channel, mut consumer) = match subscribed {
            Ok(pair) => pair,
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::warn!(queue = %ctx.queue, "subscribing failed, retrying: {e}");
                if sleep_or_stop(&mut stop, RESUBSCRIBE_DELAY).await {
                    return;
                }
                // The queue may have gone with the old connection (an exclusive one, say).
                ctx.conn.redeclare().await;
                seen = generation - 1;
                continue;
            }
        };
        if let Some(tx) = ready.take() {
            let _ = tx.send(Ok(()));
        }
        seen = generation;
        let ended = {
            let _subscribed = ctx.status.subscribed();
            consume(&ctx, &channel, &mut consumer, &mut stop).await
        };
        match ended {
            Ended::Stop => {
                close(&channel, &consumer, "listener stopped").await;
                return;
            }
            Ended::Paused(until) => {
                // Whatever was prefetched goes back to the queue for the cool-down.
                close(&channel, &consumer, "circuit breaker open").await;
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = stopped(&mut stop) => return,
                }
                if let Some(breaker) = &ctx.breaker {
                    breaker.resume();
                }
                seen = generation - 1;
                continue;
            }
            Ended::Lost => {}
        }
        if conn.status().connected() {
            // Cancelled by the broker (queue deleted) while the connection stays up.
            tracing::warn!(queue = %ctx.queue, "consumer cancelled by the broker; subscribing again");
            if sleep_or_stop(&mut stop, RESUBSCRIBE_DELAY).await {
                return;
            }
            ctx.conn.redeclare().await;
            seen = generation - 1;
        }
    }
}

/// Handles deliveries until told to stop, the consumer ends, or the circuit breaker opens.
async fn consume(
    ctx: &Context,
    channel: &lapin::Channel,
    consumer: &mut lapin::Consumer,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut open = ctx.breaker.as_deref().map(Breaker::subscribe);
    loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => return Ended::Stop,
            until = opened(&mut open) => return Ended::Paused(until),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    if let Some(bucket) = &ctx.rate {
                        tokio::select! {
                            biased;
                            // Unacked, the delivery goes back to the queue when the channel closes.
                            _ = stopped(stop) => return Ended::Stop,
                            _ = bucket.acquire() => {}
                        }
                    }
                    handle(ctx, delivery).await;
                }
                Some(Err(e)) => {
                    tracing::debug!(queue = %ctx.queue, channel = channel.id(), "consumer ended: {e}");
                    return Ended::Lost;
                }
                None => return Ended::Lost,
            }
        }
    }
}

/// Cancels the consumer, then closes the channel so that whatever was prefetched goes back to the
/// queue.
async fn close(channel: &lapin::Channel, consumer: &lapin::Consumer, why: &str) {
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, why.into()).await;
}

/// Resolves with the end of the cool-down once the breaker is open (never without a breaker).
async fn opened(
    open: &mut Option<watch::Receiver<Option<tokio::time::Instant>>>,
) -> tokio::time::Instant {
    let Some(open) = open else {
        return std::future::pending().await;
    };
    let until = match open.wait_for(Option::is_some).await {
        Ok(until) => *until,
        Err(_) => None,
    };
    match until {
        Some(until) => until,
        None => std::future::pending().await,
    }
}

async fn subscribe(
    ctx: &Context,
    conn: &lapin::Connection,
) -> Result<(lapin::Channel, lapin::Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(ctx.prefetch, BasicQosOptions::default())
        .await?;
    let options = BasicConsumeOptions {
        no_ack: ctx.ack_mode == AckMode::None,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(
            ctx.queue.as_str().into(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Resolves once the listener is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the handle is gone, which stops the listener too.
    let _ = stop.wait_for(|s| *s).await;
}

/// Returns true if told to stop while sleeping.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(stop) => true,
    }
}

/// How soon a message another consumer is handling comes back to the queue, at the earliest and
/// at the latest (within the other consumer's lease).
const BUSY_MIN_DELAY: Duration = Duration::from_millis(50);
const BUSY_MAX_DELAY: Duration = Duration::from_secs(1);

/// Puts a delivery back in the queue after `delay`, without holding up the consumer.
fn requeue_later(acker: lapin::Acker, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        if let Err(e) = acker.nack(requeue).await {
            // The channel is gone; the broker requeues the message itself.
            tracing::debug!("requeue failed: {e}");
        }
    });
}

/// Runs the handler on one delivery and acknowledges by its outcome.
async fn handle(ctx: &Context, d: lapin::message::Delivery) {
    let meta = Metadata {
        queue: ctx.queue.clone(),
        exchange: d.exchange.to_string(),
        routing_key: d.routing_key.to_string(),
        redelivered: d.redelivered,
        delivery_tag: d.delivery_tag,
        properties: d.properties.clone(),
        acker: (ctx.ack_mode == AckMode::Manual).then(|| Acker(d.acker.clone())),
    };
    let span = tracing::info_span!(
        "delivery",
        queue = %ctx.queue,
        routing_key = %meta.routing_key,
        message_id = meta.message_id().unwrap_or(""),
        outcome = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    async {
        let started = Instant::now();
        let _in_flight = ctx.metrics.in_flight();
        let reply_to = meta.properties.reply_to().as_ref().map(|r| r.to_string());
        let correlation_id = meta.properties.correlation_id().clone();
        let message_id = meta.message_id().unwrap_or("").to_owned();
        let claim = match &ctx.idempotency {
            Some(idempotency) if !message_id.is_empty() => {
                let key = idempotent::key(&ctx.queue, &message_id);
                match idempotency.store().begin(&key, idempotency.lease_time()).await {
                    Ok(Claim::Acquired(token)) => Some((idempotency, key, token)),
                    Ok(Claim::Done) => {
                        tracing::debug!(queue = %ctx.queue, message_id, "duplicate of a handled message: acknowledged without running");
                        if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
                            tracing::warn!(queue = %ctx.queue, message_id, "acknowledgement failed: {e}");
                        }
                        tracing::Span::current().record("outcome", "duplicate");
                        return;
                    }
                    Ok(Claim::Busy { remaining }) => {
                        tracing::debug!(queue = %ctx.queue, message_id, "another consumer is handling this message id: requeued");
                        requeue_later(d.acker, remaining.clamp(BUSY_MIN_DELAY, BUSY_MAX_DELAY));
                        tracing::Span::current().record("outcome", "busy");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %ctx.queue, message_id, "idempotency store unavailable, requeueing: {e}");
                        requeue_later(d.acker, BUSY_MAX_DELAY);
                        tracing::Span::current().record("outcome", "store-unavailable");
                        return;
                    }
                }
            }
            Some(_) => {
                tracing::warn!(queue = %ctx.queue, "a message without message_id cannot be deduplicated: handling it anyway");
                None
            }
            None => None,
        };
        // Kept for re-publishing, should the handler fail.
        let kept_body = ctx.retry.is_some().then(|| d.data.clone());
        let delivery = Delivery { body: d.data, meta, state: ctx.state.clone(), template: ctx.replies.clone() };
        let call = (ctx.handler)(delivery);
        let called = Instant::now();
        let outcome = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Outcome::Failed(super::ListenerError::from_panic(panic)),
        };
        ctx.metrics.handler_ran(called.elapsed());
        // A reply goes out before the ack: if it cannot be sent, the request counts as failed.
        let outcome = match (outcome, reply_to) {
            (Outcome::Done(Some((body, content_type))), Some(reply_to)) => {
                let mut properties = lapin::BasicProperties::default().with_content_type(content_type.into());
                if let Some(id) = correlation_id {
                    properties = properties.with_correlation_id(id);
                }
                let reply = Message { body, properties };
                match ctx.replies.send("", &reply_to, reply).await {
                    Ok(()) => Outcome::Done(None),
                    Err(e) => Outcome::Failed(e.into()),
                }
            }
            (outcome, _) => outcome,
        };
        let label = match &outcome {
            Outcome::Done(_) => "ok",
            Outcome::Failed(e) if e.should_requeue() => "requeued",
            Outcome::Failed(_) => "rejected",
            Outcome::Undecodable(_) => "undecodable",
        };
        match &outcome {
            Outcome::Done(_) => {}
            Outcome::Failed(e) => tracing::warn!(queue = %ctx.queue, message_id, "handler failed: {e}"),
            Outcome::Undecodable(e) => {
                tracing::error!(queue = %ctx.queue, message_id, "rejecting a message that does not convert: {e}")
            }
        }
        if let Some((idempotency, key, token)) = claim {
            // "done" before the ack: a crash in between gets the redelivery acked unread.
            let recorded = match &outcome {
                Outcome::Done(_) => idempotency.store().complete(&key, &token, idempotency.keep_time()).await,
                _ => idempotency.store().release(&key, &token).await,
            };
            if let Err(e) = recorded {
                tracing::warn!(queue = %ctx.queue, message_id, "idempotency store: {e}");
            }
        }
        if let Some(breaker) = &ctx.breaker {
            match &outcome {
                Outcome::Done(_) => breaker.record(&ctx.queue, false),
                Outcome::Failed(_) => breaker.record(&ctx.queue, true),
                // A poison message says nothing about the handler's dependencies.
                Outcome::Undecodable(_) => {}
            }
        }
        let mut label = label;
        // Without container acks the outcome is all the metrics learn.
        let mut fate = match &outcome {
            Outcome::Done(_) => Fate::Handled,
            _ => Fate::Failed,
        };
        if ctx.ack_mode == AckMode::Auto {
            let retry = ctx.retry.as_ref().zip(kept_body);
            let failed = |body| retry::Failed {
                body,
                properties: d.properties,
                exchange: d.exchange.to_string(),
                routing_key: d.routing_key.to_string(),
            };
            let acked = match (outcome, retry) {
                (Outcome::Done(_), _) => d.acker.ack(BasicAckOptions::default()).await,
                (Outcome::Failed(e), _) if e.should_requeue() => {
                    fate = Fate::Retried;
                    d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
                }
                (Outcome::Failed(_) | Outcome::Undecodable(_), None) => {
                    fate = Fate::DeadLettered;
                    d.acker.reject(BasicRejectOptions { requeue: false }).await
                }
                (Outcome::Failed(e), Some((policy, body))) => {
                    let failure = retry::Failure::handler(&e);
                    (label, fate) = retry::settle(ctx, policy, d.acker, failed(body), failure).await;
                    Ok(true)
                }
                (Outcome::Undecodable(e), Some((policy, body))) => {
                    let failure = retry::Failure::undecodable(&e);
                    (label, fate) = retry::settle(ctx, policy, d.acker, failed(body), failure).await;
                    Ok(true)
                }
            };
            if let Err(e) = acked {
                // The channel is gone; the broker requeues the message itself.
                tracing::warn!(queue = %ctx.queue, message_id, "acknowledgement failed: {e}");
            }
        }
        ctx.metrics.settled(fate);
        let span = tracing::Span::current();
        span.record("outcome", label);
        span.record("duration_ms", started.elapsed().as_millis() as u64);
    }
    .instrument(span)
    .await;
}
