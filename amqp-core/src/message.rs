//! Messages: a body with its properties, and what a listener learns about a delivery.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// The header naming the Rust type of a converted payload (Spring's `__TypeId__`).
pub const TYPE_ID_HEADER: &str = "__TypeId__";

/// A message as bytes plus AMQP properties (for [`crate::Template::send`]).
#[derive(Clone, Debug, Default)]
pub struct Message {
    /// The body.
    pub body: Vec<u8>,
    /// The properties (content type, headers, message id, …).
    pub properties: BasicProperties,
}

impl Message {
    /// A message with this body and default properties (made persistent when sent).
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            properties: BasicProperties::default(),
        }
    }

    /// Replaces the properties.
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// What a listener knows about the delivery it is handling.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// The queue it was consumed from.
    pub queue: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// The delivery tag on the consuming channel.
    pub delivery_tag: u64,
    /// All AMQP properties, headers included.
    pub properties: BasicProperties,
    /// The acknowledger, in [`crate::AckMode::Manual`] only.
    pub(crate) acker: Option<crate::listener::Acker>,
}

impl Metadata {
    /// The message id, if the publisher set one.
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|s| s.as_str())
    }

    /// The acknowledger: present in [`crate::AckMode::Manual`], where acking is the handler's
    /// job.
    pub fn acker(&self) -> Option<&crate::listener::Acker> {
        self.acker.as_ref()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.properties
            .headers()
            .as_ref()
            .and_then(|h: &FieldTable| h.inner().get(name))
    }
}
