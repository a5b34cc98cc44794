//! What a queue's `x-` arguments ask for, read and checked at declaration with RabbitMQ's 406
//! texts.

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};

use crate::error::{AmqpError, AmqpResult};
use crate::vhost::QueueLimits;

/// What a queue's `x-` arguments ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Most ready messages the queue holds (`x-max-length`).
    pub max_length: Option<u64>,
    /// Most body bytes of ready messages the queue holds (`x-max-length-bytes`).
    pub max_length_bytes: Option<u64>,
    /// What happens to a message that would exceed them (`x-overflow`).
    pub overflow: Overflow,
    /// Where rejected messages are republished (`x-dead-letter-exchange`).
    pub dead_letter_exchange: Option<ShortString>,
    /// The routing key they get there (`x-dead-letter-routing-key`; default: their own).
    pub dead_letter_routing_key: Option<ShortString>,
    /// How long a message may wait in the queue (`x-message-ttl`).
    pub message_ttl: Option<Duration>,
    /// How long the queue may go unused before it is deleted (`x-expires`).
    pub expires: Option<Duration>,
    /// Highest message priority honoured (`x-max-priority`); 0 means none.
    pub max_priority: u8,
    /// Only one consumer at a time receives (`x-single-active-consumer`).
    pub single_active_consumer: bool,
    /// Declared with `x-queue-type = quorum`.
    pub quorum: bool,
    /// Redeliveries after which a message is dead-lettered (`x-delivery-limit`, quorum only).
    pub delivery_limit: Option<u64>,
}

/// `x-overflow`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Drop (or dead-letter) the oldest ready message to make room (RabbitMQ's default).
    #[default]
    DropHead,
    /// Refuse the new message: a publisher in confirm mode gets `basic.nack`.
    RejectPublish,
    /// As `RejectPublish`, and the refused message is dead-lettered (reason `maxlen`).
    RejectPublishDlx,
}

/// Flags from `queue.declare` that some queue types constrain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeclareFlags {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
}

impl Policy {
    /// The policy with the broker's caps applied: as with RabbitMQ's operator policies, the
    /// lower of the queue's own limit and the broker's wins.
    pub fn capped(mut self, limits: &QueueLimits) -> Self {
        self.max_length_bytes = match (self.max_length_bytes, limits.max_length_bytes) {
            (Some(own), Some(cap)) => Some(own.min(cap)),
            (own, cap) => own.or(cap),
        };
        self
    }

    /// Reads and checks the arguments (406 for bad values, with RabbitMQ's wording).
    pub fn from_arguments(args: &FieldTable, queue: &ShortString, vhost: &str) -> AmqpResult<Self> {
        Self::for_declare(args, queue, vhost, None)
    }

    /// As [`Policy::from_arguments`], also checking the flags a quorum queue requires (`None`
    /// when recovering what was accepted before).
    pub fn for_declare(
        args: &FieldTable,
        queue: &ShortString,
        vhost: &str,
        flags: Option<DeclareFlags>,
    ) -> AmqpResult<Self> {
        let invalid = |key: &str, why: &str| {
            AmqpError::precondition_failed(format_args!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let get = |key: &str| args.inner().get(key);
        let mut policy = Policy::default();
        match get("x-queue-type").map(text) {
            None => {}
            Some(Some(kind)) if kind == "classic" => {}
            Some(Some(kind)) if kind == "quorum" => policy.quorum = true,
            Some(Some(kind)) if kind == "stream" => {
                return Err(invalid(
                    "x-queue-type",
                    "stream queues are not supported by this broker (use a classic or quorum queue)",
                ));
            }
            Some(Some(kind)) => {
                return Err(invalid(
                    "x-queue-type",
                    &format!("\"unsupported queue type '{kind}'\""),
                ));
            }
            Some(None) => return Err(invalid("x-queue-type", "{unacceptable_type}")),
        }
        let queue_type = if policy.quorum {
            "rabbit_quorum_queue"
        } else {
            "rabbit_classic_queue"
        };
        let not_for_type = |key: &str| {
            AmqpError::precondition_failed(format_args!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type {queue_type}"
            ))
        };
        let refused: &[&str] = if policy.quorum {
            &["x-max-priority", "x-queue-mode"]
        } else {
            &["x-delivery-limit"]
        };
        if let Some(key) = refused.iter().find(|k| args.contains_key(k)) {
            return Err(not_for_type(key));
        }
        if let (true, Some(f)) = (policy.quorum, flags) {
            let property = if !f.durable {
                Some("non-durable")
            } else if f.exclusive {
                Some("exclusive-owner")
            } else if f.auto_delete {
                Some("auto-delete")
            } else {
                None
            };
            if let Some(p) = property {
                return Err(AmqpError::precondition_failed(format_args!(
                    "invalid property '{p}' for queue '{queue}' in vhost '{vhost}'"
                )));
            }
        }
        // A non-negative integer argument.
        let count = |key: &str| -> AmqpResult<Option<u64>> {
            let Some(v) = get(key) else { return Ok(None) };
            let n = integer(v).ok_or_else(|| invalid(key, "{unacceptable_type}"))?;
            u64::try_from(n)
                .map(Some)
                .map_err(|_| invalid(key, &format!("{{value_negative,{n}}}")))
        };
        policy.max_length = count("x-max-length")?;
        policy.max_length_bytes = count("x-max-length-bytes")?;
        policy.message_ttl = count("x-message-ttl")?.map(Duration::from_millis);
        policy.expires = match count("x-expires")? {
            Some(0) => return Err(invalid("x-expires", "{value_zero,0}")),
            ms => ms.map(Duration::from_millis),
        };
        if let Some(p) = count("x-max-priority")? {
            policy.max_priority = u8::try_from(p)
                .map_err(|_| invalid("x-max-priority", &format!("{{max_value_exceeded,{p}}}")))?;
        }
        policy.delivery_limit = count("x-delivery-limit")?;
        if let Some(v) = get("x-single-active-consumer") {
            policy.single_active_consumer = match v {
                AMQPValue::Boolean(b) => *b,
                _ => return Err(invalid("x-single-active-consumer", "{unacceptable_type}")),
            };
        }
        if let Some(v) = get("x-overflow") {
            policy.overflow = match text(v).as_deref() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => return Err(invalid("x-overflow", "{unacceptable_value}")),
            };
        }
        for (key, slot) in [
            ("x-dead-letter-exchange", &mut policy.dead_letter_exchange),
            (
                "x-dead-letter-routing-key",
                &mut policy.dead_letter_routing_key,
            ),
        ] {
            if let Some(v) = get(key) {
                let name = text(v).ok_or_else(|| invalid(key, "{unacceptable_type}"))?;
                *slot = Some(ShortString::from(name));
            }
        }
        if policy.dead_letter_routing_key.is_some() && policy.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined",
            ));
        }
        Ok(policy)
    }
}

pub(crate) fn integer(v: &AMQPValue) -> Option<i64> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    })
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
