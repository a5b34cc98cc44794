//! Messages as the broker holds them, and the credit that bounds unacknowledged deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use bytes::Bytes;

/// A published message, shared (not copied) by every queue it is routed to.
#[derive(Debug)]
pub(crate) struct Message {
    /// The exchange it was published to (reported in `basic.deliver`).
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// The content header's properties, as the publisher sent them.
    pub properties: BasicProperties,
    /// The whole body, reassembled from its frames.
    pub body: Bytes,
}

/// A message's place in one queue.
#[derive(Clone, Debug)]
pub(crate) struct QueuedMessage {
    /// Position in the queue: requeued messages go back in order of this number, as in RabbitMQ.
    pub seq: u64,
    /// Whether it was delivered before (the `redelivered` flag).
    pub redelivered: bool,
    /// The message itself.
    pub msg: Arc<Message>,
    /// When it expires (`x-message-ttl` or its `expiration`, whichever is sooner); kept on
    /// requeue, as in RabbitMQ.
    pub expires_at: Option<Instant>,
    /// Deliveries that came back (requeued): `x-delivery-count` and `x-delivery-limit`.
    pub delivery_count: u32,
}

impl QueuedMessage {
    /// Whether its deadline has passed (a TTL of 0 still lets an immediate delivery through).
    pub fn expired_at(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t < now)
    }
}

impl Message {
    /// The per-message TTL from the `expiration` property (milliseconds, as a decimal string);
    /// a value that is not one is ignored.
    pub fn ttl(&self) -> Option<Duration> {
        ttl_of(&self.properties)
    }
}

/// The `expiration` property as a duration (milliseconds, as a decimal string); a value that is
/// not one is ignored.
pub(crate) fn ttl_of(properties: &BasicProperties) -> Option<Duration> {
    let text = properties.expiration().as_ref()?;
    text.as_str().parse::<u64>().ok().map(Duration::from_millis)
}

/// A prefetch window: how many deliveries may be unacknowledged, and how many are.
///
/// Shared between the queues that deliver (taking credit) and the channel that sees the acks
/// (giving it back), so it is a pair of atomics rather than state behind the channel.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    /// The window size; 0 means unlimited.
    limit: AtomicU32,
    /// Deliveries currently unacknowledged under this window.
    used: AtomicU32,
}

impl Credit {
    /// A window of `limit` deliveries (0: unlimited).
    pub fn new(limit: u16) -> Self {
        Self {
            limit: AtomicU32::new(u32::from(limit)),
            used: AtomicU32::new(0),
        }
    }

    /// Changes the window size (`basic.qos` with `global = true`).
    pub fn set_limit(&self, limit: u16) {
        self.limit.store(u32::from(limit), Ordering::Release);
    }

    /// Takes one unit if the window has room.
    pub fn try_take(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (limit == 0 || used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    /// Gives one unit back.
    pub fn give_back(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
    }

    /// The window size (0: unlimited), for the management API.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Units taken now (deliveries unacknowledged under this window), for the management API.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::Credit;

    #[test]
    fn credit_stops_at_the_limit_and_refills() {
        let c = Credit::new(2);
        assert!(c.try_take() && c.try_take());
        assert!(!c.try_take());
        c.give_back();
        assert!(c.try_take());
    }

    #[test]
    fn zero_means_unlimited() {
        let c = Credit::new(0);
        assert!((0..10_000).all(|_| c.try_take()));
    }
}
