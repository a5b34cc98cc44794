//! The index entry of a message whose body is on disk only, and what the memory budget counts.
//!
//! A long durable queue keeps one [`PagedEntry`] per paged-out message: 24 bytes, so two
//! million of them take 48 MiB where the messages themselves (properties, body, bookkeeping)
//! would take gigabytes. Everything else about the message is read back from its `M` record.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::message::{Message, QueuedMessage};

/// What the budget counts for a message held in memory besides its body: the `Message` and its
/// place in the queue, plus allocator overhead. An estimate (headers on the heap are not
/// counted), good enough for a budget and cheap to keep exact sums of.
pub(crate) const RESIDENT_OVERHEAD_BYTES: u64 =
    (std::mem::size_of::<Message>() + std::mem::size_of::<QueuedMessage>() + 64) as u64;

/// Memory the budget charges for holding `e` (body included).
pub(crate) fn resident_cost(e: &QueuedMessage) -> u64 {
    e.msg.body.len() as u64 + RESIDENT_OVERHEAD_BYTES
}

/// Bit of `flags` set when the message was delivered before.
const REDELIVERED: u32 = 1 << 31;
/// Bit of `flags` set when the message is not on disk but held in memory behind the paged ones
/// (a transient message that arrived after them; order is kept by this entry's place).
const HELD: u32 = 1 << 30;
/// The rest of `flags`: the delivery count, saturating.
const COUNT_MASK: u32 = HELD - 1;

/// A message in the paged part of a queue, in 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PagedEntry {
    /// Its position in the queue, and the key of its `M` record.
    pub seq: u64,
    /// Its deadline as milliseconds after [`epoch`], plus one; 0 is none.
    expires: u64,
    /// Body size, for `x-max-length-bytes`.
    pub body_bytes: u32,
    /// `REDELIVERED`, `HELD` and the delivery count.
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<PagedEntry>() == 24);

impl PagedEntry {
    /// The entry for a message; `held` when the message stays in memory (not on disk).
    pub fn new(e: &QueuedMessage, held: bool) -> Self {
        Self::from_parts(
            e.seq,
            e.msg.body.len() as u64,
            e.redelivered,
            e.delivery_count,
            e.expires_at,
            held,
        )
    }

    /// An entry from its parts (recovery has no `QueuedMessage`).
    pub fn from_parts(
        seq: u64,
        body_bytes: u64,
        redelivered: bool,
        delivery_count: u32,
        expires_at: Option<Instant>,
        held: bool,
    ) -> Self {
        let mut flags = delivery_count.min(COUNT_MASK);
        if redelivered {
            flags |= REDELIVERED;
        }
        if held {
            flags |= HELD;
        }
        Self {
            seq,
            expires: expires_at.map_or(0, encode_deadline),
            body_bytes: u32::try_from(body_bytes).unwrap_or(u32::MAX),
            flags,
        }
    }

    pub fn redelivered(&self) -> bool {
        self.flags & REDELIVERED != 0
    }

    pub fn held(&self) -> bool {
        self.flags & HELD != 0
    }

    pub fn delivery_count(&self) -> u32 {
        self.flags & COUNT_MASK
    }

    pub fn expires_at(&self) -> Option<Instant> {
        (self.expires != 0).then(|| epoch() + Duration::from_millis(self.expires - 1))
    }

    /// Whether its deadline has passed (as [`QueuedMessage::expired_at`]).
    pub fn expired_at(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|t| t < now)
    }
}

/// The instant deadlines are counted from (the first time one is encoded).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds after the epoch, rounded up (a message never expires early), plus one.
fn encode_deadline(at: Instant) -> u64 {
    let since = at.saturating_duration_since(epoch());
    let millis = since.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX - 1) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_deadline_round_trip() {
        let at = Instant::now() + Duration::from_millis(1500);
        let e = PagedEntry::from_parts(9, 1024, true, 3, Some(at), false);
        assert_eq!((e.seq, e.body_bytes), (9, 1024));
        assert!(e.redelivered() && !e.held());
        assert_eq!(e.delivery_count(), 3);
        let back = e.expires_at().unwrap();
        assert!(back >= at && back < at + Duration::from_millis(2));
        let none = PagedEntry::from_parts(1, 0, false, 0, None, true);
        assert!(none.held() && !none.redelivered() && none.expires_at().is_none());
    }
}
