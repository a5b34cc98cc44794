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

use super::AckMode;
use super::handler::Acker;
use crate::connection::Connection;
use crate::error::Result;
use crate::extract::{Delivery, HandlerFn, Outcome, StateMap};
use crate::message::{Message, Metadata};
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
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    // Graceful stop between deliveries: cancel, then close the channel so that
                    // whatever was prefetched goes back to the queue.
                    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    let _ = channel.close(200, "listener stopped".into()).await;
                    return;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => handle(&ctx, delivery).await,
                    Some(Err(e)) => {
                        tracing::debug!(queue = %ctx.queue, "consumer ended: {e}");
                        break;
                    }
                    None => break,
                }
            }
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
        let reply_to = meta.properties.reply_to().as_ref().map(|r| r.to_string());
        let correlation_id = meta.properties.correlation_id().clone();
        let message_id = meta.message_id().unwrap_or("").to_owned();
        let delivery = Delivery { body: d.data, meta, state: ctx.state.clone(), template: ctx.replies.clone() };
        let call = (ctx.handler)(delivery);
        let outcome = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Outcome::Failed(super::ListenerError::from_panic(panic)),
        };
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
        if ctx.ack_mode == AckMode::Auto {
            let acked = match outcome {
                Outcome::Done(_) => d.acker.ack(BasicAckOptions::default()).await,
                Outcome::Failed(e) if e.should_requeue() => {
                    d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
                }
                Outcome::Failed(_) | Outcome::Undecodable(_) => d.acker.reject(BasicRejectOptions { requeue: false }).await,
            };
            if let Err(e) = acked {
                // The channel is gone; the broker requeues the message itself.
                tracing::warn!(queue = %ctx.queue, message_id, "acknowledgement failed: {e}");
            }
        }
        let span = tracing::Span::current();
        span.record("outcome", label);
        span.record("duration_ms", started.elapsed().as_millis() as u64);
    }
    .instrument(span)
    .await;
}
