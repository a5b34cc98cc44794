//! The failure path of a listener with a retry policy: re-publish the message with a delay, or to
//! `<queue>.dlq` with the error in headers, and only then ack the delivery.
//!
//! Publish-then-ack makes the hand-over at-least-once: if the ack is lost (the connection drops
//! in between) the broker redelivers the original and a second copy may exist; the message is
//! never lost. If the re-publish fails, the delivery is requeued after a pause, with its attempt
//! count unchanged, so a broker in trouble does not turn into a hot loop.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::handler::{Disposition, ListenerError};
use super::metrics::Fate;
use super::worker::Context;
use crate::delay::Target;
use crate::message::Message;
use crate::retry::{
    ATTEMPT_HEADER, EXCEPTION_MESSAGE_HEADER, EXCEPTION_TYPE_HEADER, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER, Retry, attempts_of, dead_letter_queue,
};

/// How long a delivery whose re-publish failed waits before it is requeued.
const REPUBLISH_FAILED_PAUSE: Duration = Duration::from_secs(1);

/// The delivery that failed, as it came.
pub(crate) struct Failed {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub exchange: String,
    pub routing_key: String,
}

/// Why it failed.
pub(crate) struct Failure {
    pub text: String,
    pub type_name: &'static str,
    /// Straight to the dlq, whatever the attempts left.
    pub permanent: bool,
}

impl Failure {
    /// A handler's error: permanent when it says [`Disposition::Reject`].
    pub(crate) fn handler(e: &ListenerError) -> Self {
        Self {
            text: e.to_string(),
            type_name: e.type_name(),
            permanent: e.disposition() == Disposition::Reject,
        }
    }

    /// A body that does not convert: permanent, it will not convert next time either.
    pub(crate) fn undecodable(e: &crate::Error) -> Self {
        Self {
            text: e.to_string(),
            type_name: std::any::type_name::<crate::Error>(),
            permanent: true,
        }
    }
}

/// Re-publishes a failed delivery for another attempt or to the dlq, then acks it. Returns the
/// outcome's label for the delivery's span, and its fate for the metrics (a delivery whose
/// re-publish failed is requeued: another attempt).
pub(crate) async fn settle(
    ctx: &Context,
    policy: &Retry,
    acker: lapin::Acker,
    failed: Failed,
    failure: Failure,
) -> (&'static str, Fate) {
    let mut headers = failed.properties.headers().clone().unwrap_or_default();
    let attempts = attempts_of(Some(&headers)).saturating_add(1);
    set(
        &mut headers,
        ATTEMPT_HEADER,
        AMQPValue::LongLongInt(attempts.into()),
    );
    // The first failure records where the message came from; retries arrive from the delay
    // mechanism, so later ones keep what is there.
    if !headers.inner().contains_key(ORIGINAL_EXCHANGE_HEADER) {
        set(
            &mut headers,
            ORIGINAL_EXCHANGE_HEADER,
            text(&failed.exchange),
        );
        set(
            &mut headers,
            ORIGINAL_ROUTING_KEY_HEADER,
            text(&failed.routing_key),
        );
    }
    let spent = attempts >= policy.max_attempts();
    let (label, fate, published) = if failure.permanent || spent {
        set(&mut headers, EXCEPTION_MESSAGE_HEADER, text(&failure.text));
        set(&mut headers, EXCEPTION_TYPE_HEADER, text(failure.type_name));
        let dlq = dead_letter_queue(&ctx.queue);
        tracing::warn!(queue = %ctx.queue, attempts, "to {dlq}: {}", failure.text);
        let message = message(failed, headers);
        let published = ctx.replies.send("", &dlq, message).await;
        ("dead-lettered", Fate::DeadLettered, published)
    } else {
        let delay = policy.delay_after(attempts);
        tracing::info!(queue = %ctx.queue, attempts, "failed, retrying in {delay:?}: {}", failure.text);
        let target = Target::Retry { queue: &ctx.queue };
        let message = message(failed, headers);
        let published = ctx.replies.send_via_delay(target, message, delay).await;
        ("retried", Fate::Retried, published)
    };
    match published {
        Ok(()) => {
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                // Redelivered by the broker: a duplicate, never a loss.
                tracing::warn!(queue = %ctx.queue, "acknowledgement after re-publishing failed: {e}");
            }
            (label, fate)
        }
        Err(e) => {
            tracing::warn!(queue = %ctx.queue, "re-publishing a failed message failed, requeueing it in {REPUBLISH_FAILED_PAUSE:?}: {e}");
            tokio::spawn(async move {
                tokio::time::sleep(REPUBLISH_FAILED_PAUSE).await;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                if let Err(e) = acker.nack(requeue).await {
                    tracing::debug!("requeue failed: {e}");
                }
            });
            ("republish-failed", Fate::Retried)
        }
    }
}

fn message(failed: Failed, headers: FieldTable) -> Message {
    Message {
        body: failed.body,
        properties: failed.properties.with_headers(headers),
    }
}

fn set(headers: &mut FieldTable, name: &str, value: AMQPValue) {
    headers.insert(name.into(), value);
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
