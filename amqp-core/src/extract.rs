//! What a handler's parameters are made from: the delivery, application state and a template.
//!
//! In the axum style, every parameter but the last is an extractor ([`FromDelivery`]): the
//! delivery's [`Metadata`], shared [`State`], a [`Template`] to send more messages, or in manual
//! ack mode the [`Acker`]. The last parameter is the payload, any `serde::Deserialize` type.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::converter::{JsonConverter, MessageConverter};
use crate::error::Error;
use crate::listener::{Acker, ListenerError};
use crate::message::Metadata;
use crate::template::Template;

/// One delivery with everything its handler may ask for.
#[derive(Debug)]
pub struct Delivery {
    pub(crate) body: Vec<u8>,
    pub(crate) meta: Metadata,
    pub(crate) state: Arc<StateMap>,
    pub(crate) template: Template,
}

impl Delivery {
    /// The delivery's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body converted to `T` (JSON).
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let content_type = self
            .meta
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str());
        JsonConverter.deserialize(&self.body, content_type)
    }
}

/// Application state shared with handlers, by type. Built with
/// [`crate::App::state`] (or [`crate::ListenerBuilder::state`]).
#[derive(Clone, Debug, Default)]
pub struct StateMap {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl StateMap {
    /// Adds (or replaces) the value of type `T`.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.values
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|v| v.downcast::<T>().ok())
    }
}

/// Shared state of type `T`, registered with [`crate::App::state`].
#[derive(Debug)]
pub struct State<T>(pub Arc<T>);

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A handler parameter taken from the delivery or the application.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a listener here",
    label = "not an extractor",
    note = "the last parameter is the payload (any serde::Deserialize type); the ones before it must be extractors: Metadata, State<T>, Template, or Acker (with ack = \"manual\")"
)]
pub trait FromDelivery: Sized {
    /// Takes the value from the delivery; an error fails the delivery like a handler error.
    fn from_delivery(delivery: &Delivery) -> Result<Self, ListenerError>;
}

impl FromDelivery for Metadata {
    fn from_delivery(d: &Delivery) -> Result<Self, ListenerError> {
        Ok(d.meta.clone())
    }
}

impl FromDelivery for Template {
    fn from_delivery(d: &Delivery) -> Result<Self, ListenerError> {
        Ok(d.template.clone())
    }
}

impl FromDelivery for Acker {
    fn from_delivery(d: &Delivery) -> Result<Self, ListenerError> {
        d.meta
            .acker()
            .cloned()
            .ok_or_else(|| ListenerError::reject("an Acker parameter needs ack = \"manual\""))
    }
}

impl<T: Send + Sync + 'static> FromDelivery for State<T> {
    fn from_delivery(d: &Delivery) -> Result<Self, ListenerError> {
        d.state.get::<T>().map(State).ok_or_else(|| {
            ListenerError::reject(format!(
                "no state of type {} was registered (App::state)",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// What the container makes of a delivery's handling.
#[derive(Debug)]
pub enum Outcome {
    /// Handled; with a reply body (and its content type) for `reply_to`, if the handler returned
    /// one.
    Done(Option<(Vec<u8>, String)>),
    /// The handler failed.
    Failed(ListenerError),
    /// The body did not convert to the handler's payload type.
    Undecodable(Error),
}

/// A handler's return value: `()`, or `Result<R, E>` where a non-`()` `R` is the reply.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a listener",
    label = "not a listener's return type",
    note = "return `()`, or `Result<R, E>` where `E: Into<ListenerError>` (any std::error::Error converts) and `R: Serialize` (a non-() R is sent to the message's reply_to)"
)]
pub trait IntoOutcome {
    /// The outcome, with the reply serialized as JSON.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Done(None)
    }
}

impl<R: Serialize + 'static, E: Into<ListenerError>> IntoOutcome for Result<R, E> {
    fn into_outcome(self) -> Outcome {
        outcome_with(&JsonConverter, self)
    }
}

/// The outcome of a handler's result, with the reply serialized by `converter`.
pub(crate) fn outcome_with<C: MessageConverter, R: Serialize + 'static, E: Into<ListenerError>>(
    converter: &C,
    result: Result<R, E>,
) -> Outcome {
    match result {
        Ok(_) if TypeId::of::<R>() == TypeId::of::<()>() => Outcome::Done(None),
        Ok(reply) => match converter.serialize(&reply) {
            Ok(body) => Outcome::Done(Some((body, converter.content_type().to_owned()))),
            Err(e) => Outcome::Failed(e.into()),
        },
        Err(e) => Outcome::Failed(e.into()),
    }
}

/// A handler with its types erased, as the container runs it.
pub type HandlerFn = Arc<dyn Fn(Delivery) -> BoxFuture<'static, Outcome> + Send + Sync>;
