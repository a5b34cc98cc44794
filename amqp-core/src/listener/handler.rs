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

/// What becomes of a message whose handler failed, in a listener with a
/// [retry policy](crate::ListenerBuilder::retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later: re-published with the policy's delay, or to `<queue>.dlq` once the
    /// attempts are spent.
    Retry,
    /// A permanent failure: straight to `<queue>.dlq` (without a retry policy: rejected without
    /// requeue, to the queue's dead-letter exchange if it has one).
    Reject,
    /// Back into the queue at once (`basic.nack` with requeue), bypassing the retry policy.
    Requeue,
}

/// Lets an error type say what its failures mean for the message. The default is
/// [`Disposition::Retry`]: any failure may be transient.
///
/// `?` on any `std::error::Error` gives a [`ListenerError`] with the default disposition;
/// convert with [`ListenerError::classify`] to let the error's type decide.
///
/// # Examples
///
/// ```
/// use amqp_core::{Disposition, ErrorDisposition, ListenerError};
///
/// #[derive(Debug)]
/// enum PaymentError { GatewayDown, CardDeclined }
/// impl std::fmt::Display for PaymentError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "{self:?}")
///     }
/// }
/// impl std::error::Error for PaymentError {}
/// impl ErrorDisposition for PaymentError {
///     fn disposition(&self) -> Disposition {
///         match self {
///             PaymentError::GatewayDown => Disposition::Retry,
///             // Trying again will not help: to the dlq at once.
///             PaymentError::CardDeclined => Disposition::Reject,
///         }
///     }
/// }
///
/// let e = ListenerError::classify(PaymentError::CardDeclined);
/// assert_eq!(e.disposition(), Disposition::Reject);
/// assert_eq!(e.type_name(), std::any::type_name::<PaymentError>());
/// ```
pub trait ErrorDisposition {
    /// What to do with the message this error failed.
    fn disposition(&self) -> Disposition {
        Disposition::Retry
    }
}

/// Why a handler failed, and what should become of the message.
///
/// Any `std::error::Error` converts into one (so `?` works on your own errors) with the default
/// disposition: retried by a listener with a [retry policy](crate::ListenerBuilder::retry), and
/// rejected without requeue by one without. Say [`ListenerError::reject`] for a permanent
/// failure, [`ListenerError::requeue`] to put the message straight back, or let the error's
/// type decide with [`ListenerError::classify`] ([`ErrorDisposition`]).
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself, which is what allows
/// that blanket conversion.
pub struct ListenerError {
    /// `None`: the default (retry with a policy, reject without one).
    disposition: Option<Disposition>,
    /// The Rust type of the error, for the dead-letter queue's `x-exception-type` header.
    type_name: &'static str,
    error: BoxError,
}

impl ListenerError {
    fn with<E: Into<BoxError>>(disposition: Option<Disposition>, error: E) -> Self {
        Self {
            disposition,
            type_name: std::any::type_name::<E>(),
            error: error.into(),
        }
    }

    /// A permanent failure. Without a retry policy the message is rejected without requeue
    /// (to the queue's dead-letter exchange if it has one, dropped otherwise); with one it goes
    /// straight to `<queue>.dlq`.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        Self::with(Some(Disposition::Reject), error)
    }

    /// A failure that puts the message back in the queue (delivered again, marked redelivered),
    /// with or without a retry policy. Use it for transient trouble only: a message that always
    /// fails would loop.
    pub fn requeue(error: impl Into<BoxError>) -> Self {
        Self::with(Some(Disposition::Requeue), error)
    }

    /// A failure worth another attempt, through the listener's retry policy (without one, the
    /// message is rejected as before).
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self::with(Some(Disposition::Retry), error)
    }

    /// A failure whose type says what to do ([`ErrorDisposition`]).
    pub fn classify<E>(error: E) -> Self
    where
        E: ErrorDisposition + std::error::Error + Send + Sync + 'static,
    {
        let disposition = error.disposition();
        Self::with(Some(disposition), error)
    }

    /// Whether the message is to be requeued.
    pub fn should_requeue(&self) -> bool {
        self.disposition == Some(Disposition::Requeue)
    }

    /// What is to become of the message under a retry policy.
    pub fn disposition(&self) -> Disposition {
        self.disposition.unwrap_or(Disposition::Retry)
    }

    /// The Rust type of the error it was made from.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".into());
        Self {
            disposition: None,
            type_name: "panic",
            error: format!("handler panicked: {text}").into(),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ListenerError {
    fn from(e: E) -> Self {
        Self::with(None, e)
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
            .field("disposition", &self.disposition)
            .field("type_name", &self.type_name)
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
