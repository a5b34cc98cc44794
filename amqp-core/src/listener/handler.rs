//! Handlers with their types erased: a typed `async fn(T) -> Result<R, E>` becomes one function
//! from an incoming body to an [`Outcome`] the container acts on.

use std::fmt;
use std::sync::Arc;

use futures::FutureExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::converter::MessageConverter;
use crate::extract::{Delivery, HandlerFn, Outcome, outcome_with};
use crate::message::Metadata;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a handler failed, and whether the message should be requeued.
///
/// Any `std::error::Error` converts into one that rejects without requeue (so `?` works on
/// your own errors); say [`ListenerError::requeue`] for a failure worth trying again.
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself, which is what allows
/// that blanket conversion.
pub struct ListenerError {
    requeue: bool,
    error: BoxError,
}

impl ListenerError {
    /// A failure that rejects the message without requeue: it goes to the queue's dead-letter
    /// exchange if it has one, and is dropped otherwise.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        Self {
            requeue: false,
            error: error.into(),
        }
    }

    /// A failure that puts the message back in the queue (delivered again, marked redelivered).
    /// Use it for transient trouble only: a message that always fails would loop.
    pub fn requeue(error: impl Into<BoxError>) -> Self {
        Self {
            requeue: true,
            error: error.into(),
        }
    }

    /// Whether the message is to be requeued.
    pub fn should_requeue(&self) -> bool {
        self.requeue
    }

    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".into());
        Self::reject(format!("handler panicked: {text}"))
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ListenerError {
    fn from(e: E) -> Self {
        Self::reject(e)
    }
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl fmt::Debug for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerError")
            .field("requeue", &self.requeue)
            .field("error", &self.error)
            .finish()
    }
}

/// Acknowledges a delivery by hand ([`crate::AckMode::Manual`]).
#[derive(Clone, Debug)]
pub struct Acker(pub(crate) lapin::Acker);

impl Acker {
    /// Acknowledges the delivery.
    pub async fn ack(&self) -> crate::Result<()> {
        self.0.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Negatively acknowledges it; with `requeue` it goes back to the queue.
    pub async fn nack(&self, requeue: bool) -> crate::Result<()> {
        self.0
            .nack(BasicNackOptions {
                requeue,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Rejects it without requeue (to the dead-letter exchange, if any).
    pub async fn reject(&self) -> crate::Result<()> {
        self.0.reject(BasicRejectOptions { requeue: false }).await?;
        Ok(())
    }
}

/// Wraps a typed handler: decode with `converter`, call, encode a non-`()` result as the reply.
pub(crate) fn erase<C, T, R, E, F, Fut>(converter: C, f: F) -> HandlerFn
where
    C: MessageConverter + Clone,
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    E: Into<ListenerError> + Send + 'static,
    F: Fn(T, Metadata) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<R, E>> + Send + 'static,
{
    Arc::new(move |delivery: Delivery| {
        let content_type = delivery
            .meta
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.to_string());
        let payload = match converter.deserialize::<T>(&delivery.body, content_type.as_deref()) {
            Ok(p) => p,
            Err(e) => return futures::future::ready(Outcome::Undecodable(e)).boxed(),
        };
        let call = f(payload, delivery.meta);
        let converter = converter.clone();
        async move { outcome_with(&converter, call.await) }.boxed()
    })
}
