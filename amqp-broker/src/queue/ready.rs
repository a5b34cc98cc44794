//! The ready messages of one queue: one lane per priority (a single one without
//! `x-max-priority`), with the counts `x-max-length` and `x-max-length-bytes` are checked against,
//! and the memory budget that pages bodies out to the queue's log.
//!
//! # Paging
//!
//! A lane is a resident part followed by a paged part:
//!
//! ```text
//! mem:   [m m m m]                      whole messages, oldest first
//! paged:          [p p p h p p ...]     24-byte index entries (`PagedEntry`), on disk
//! held:                 [h]             transient messages that arrived behind paged ones
//! ```
//!
//! Every seq in `mem` is below every seq in `paged`: a message goes to `paged` when it is
//! appended while the budget is spent or while `paged` is not empty (so order holds), and
//! requeued messages go back into `mem` (they left from its front, so they are older than
//! anything paged). When `mem` runs dry, a batch of up to half the budget is read back from the
//! log at once ([`crate::store::Store::read_back`]).
//!
//! Only a persistent message in a durable queue has a record to be read back from. A transient
//! one that must wait behind paged messages is *held*: its entry keeps its place in `paged` and
//! the message itself waits in `held` (memory the budget counts but cannot bound; the broker's
//! memory high-water mark and flow control are what bound transient messages).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::paged::{PagedEntry, RESIDENT_OVERHEAD_BYTES, resident_cost};
use crate::message::{Message, QueuedMessage};
use crate::store::{LogCursor, QueueStore};

/// The most read back into memory at once (a batch is also at most half the budget).
const MAX_PAGE_IN_BYTES: u64 = 8 << 20;

/// Where a durable queue's paged-out messages are read back from, and how much it may hold.
#[derive(Debug)]
pub(crate) struct Pager {
    /// The queue's log.
    pub store: QueueStore,
    /// Memory for resident messages (bodies plus [`RESIDENT_OVERHEAD_BYTES`] each) beyond which
    /// persistent messages are paged out.
    pub budget_bytes: u64,
}

impl Pager {
    /// How much one read-back batch brings into memory (at least one message).
    fn batch_bytes(&self) -> u64 {
        (self.budget_bytes / 2).min(MAX_PAGE_IN_BYTES)
    }
}

/// One priority's messages, in `seq` order: `mem`, then `paged` (see the module docs).
#[derive(Debug, Default)]
struct Lane {
    mem: VecDeque<QueuedMessage>,
    paged: VecDeque<PagedEntry>,
    /// The messages of `paged`'s held entries, in order.
    held: VecDeque<QueuedMessage>,
    /// Never after the next paged message's record in the log.
    cursor: LogCursor,
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.paged.is_empty()
    }

    fn front_expires_at(&self) -> Option<Instant> {
        match self.mem.front() {
            Some(e) => e.expires_at,
            None => self.paged.front().and_then(PagedEntry::expires_at),
        }
    }

    fn front_expired(&self, now: Instant) -> bool {
        match self.mem.front() {
            Some(e) => e.expired_at(now),
            None => self.paged.front().is_some_and(|p| p.expired_at(now)),
        }
    }
}

/// What [`Ready::take_all`] removed.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Messages that were in memory.
    pub resident: Vec<QueuedMessage>,
    /// Seqs of messages that were on disk only (all persistent, in the queue's log).
    pub paged: Vec<u64>,
}

impl Taken {
    pub fn len(&self) -> usize {
        self.resident.len() + self.paged.len()
    }
}

/// Ready messages by priority, each priority in `seq` order.
#[derive(Debug)]
pub(crate) struct Ready {
    /// Index = priority; the highest non-empty one is served first.
    lanes: Vec<Lane>,
    /// Messages in all lanes.
    len: usize,
    /// Body bytes in all lanes (`x-max-length-bytes` counts bodies, as RabbitMQ does).
    bytes: u64,
    /// Memory charged for the messages in memory (see [`resident_cost`]).
    resident_bytes: u64,
    /// Set for durable queues: what lets messages be paged out.
    pager: Option<Pager>,
}

impl Ready {
    /// A queue with priorities `0..=max_priority` (0: no priorities); `pager` for a durable one.
    pub fn new(max_priority: u8, pager: Option<Pager>) -> Self {
        Self {
            lanes: (0..=max_priority).map(|_| Lane::default()).collect(),
            len: 0,
            bytes: 0,
            resident_bytes: 0,
            pager,
        }
    }

    fn lane_of(&self, priority: u8) -> usize {
        usize::from(priority).min(self.lanes.len() - 1)
    }

    fn lane_for(&self, e: &QueuedMessage) -> usize {
        self.lane_of(e.msg.properties.priority().unwrap_or(0))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Memory charged for the ready messages held in memory.
    #[cfg(test)]
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a new message (the newest of its priority). `on_disk` says its record is in the
    /// queue's log, so it may be paged out.
    pub fn push_back(&mut self, e: QueuedMessage, on_disk: bool) {
        let b = self.lane_for(&e);
        self.len += 1;
        self.bytes += e.msg.body.len() as u64;
        let cost = resident_cost(&e);
        let page = self.pager.as_ref().is_some_and(|p| {
            !self.lanes[b].paged.is_empty() || self.resident_bytes + cost > p.budget_bytes
        });
        let lane = &mut self.lanes[b];
        if page && on_disk {
            lane.paged.push_back(PagedEntry::new(&e, false));
            return;
        }
        self.resident_bytes += cost;
        if page {
            lane.paged.push_back(PagedEntry::new(&e, true));
            lane.held.push_back(e);
        } else {
            lane.mem.push_back(e);
        }
    }

    /// Appends a message whose body is on disk only (recovery).
    pub fn push_paged(&mut self, priority: u8, entry: PagedEntry) {
        let b = self.lane_of(priority);
        self.len += 1;
        self.bytes += u64::from(entry.body_bytes);
        self.lanes[b].paged.push_back(entry);
    }

    /// Puts a message back at its original position (by `seq`) within its priority. It left
    /// from the front, so it belongs in the resident part.
    pub fn insert_in_order(&mut self, e: QueuedMessage) {
        let b = self.lane_for(&e);
        self.len += 1;
        self.bytes += e.msg.body.len() as u64;
        self.resident_bytes += resident_cost(&e);
        let mem = &mut self.lanes[b].mem;
        let at = mem.partition_point(|x| x.seq < e.seq);
        mem.insert(at, e);
    }

    /// Takes the oldest message of the highest priority, reading a batch back from disk first
    /// when its lane's resident part is empty.
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        loop {
            let b = self.lanes.iter().rposition(|l| !l.is_empty())?;
            if let Some(e) = self.pop_lane(b) {
                return Some(e);
            }
        }
    }

    /// The front of lane `b`, if it could be read (see [`Ready::page_in`]).
    fn pop_lane(&mut self, b: usize) -> Option<QueuedMessage> {
        if self.lanes[b].mem.is_empty() {
            self.page_in(b);
        }
        let e = self.lanes[b].mem.pop_front()?;
        self.len -= 1;
        self.bytes -= e.msg.body.len() as u64;
        self.resident_bytes -= resident_cost(&e);
        Some(e)
    }

    /// Moves a batch from the front of lane `b`'s paged part into memory. Messages whose
    /// record cannot be read back are dropped from the queue (the reader reports them).
    fn page_in(&mut self, b: usize) {
        let Self {
            lanes,
            len,
            bytes,
            resident_bytes,
            pager,
        } = self;
        let (Some(pager), lane) = (pager.as_ref(), &mut lanes[b]) else {
            return;
        };
        let budget = pager.batch_bytes();
        let mut batch = Vec::new();
        let mut cost = 0;
        while let Some(p) = lane.paged.front() {
            let next = u64::from(p.body_bytes) + RESIDENT_OVERHEAD_BYTES;
            if !batch.is_empty() && cost + next > budget {
                break;
            }
            cost += next;
            batch.extend(lane.paged.pop_front());
        }
        let wanted: Vec<u64> = batch.iter().filter(|p| !p.held()).map(|p| p.seq).collect();
        let records = if wanted.is_empty() {
            Vec::new()
        } else {
            let QueueStore { id, store } = &pager.store;
            store.read_back(*id, &mut lane.cursor, &wanted)
        };
        let mut records = records.into_iter().peekable();
        for p in batch {
            if p.held() {
                let e = lane.held.pop_front().expect("a held entry has its message");
                lane.mem.push_back(e);
                continue;
            }
            let Some(r) = records.next_if(|r| r.seq == p.seq) else {
                *len -= 1;
                *bytes -= u64::from(p.body_bytes);
                continue;
            };
            let e = QueuedMessage {
                seq: p.seq,
                redelivered: p.redelivered(),
                msg: Arc::new(Message {
                    exchange: r.exchange,
                    routing_key: r.routing_key,
                    properties: r.properties,
                    body: r.body,
                }),
                expires_at: p.expires_at(),
                delivery_count: p.delivery_count(),
            };
            *resident_bytes += resident_cost(&e);
            lane.mem.push_back(e);
        }
    }

    /// Takes every message whose deadline passed and that sits at the head of its priority
    /// (behind an unexpired one a message waits for its turn, as in RabbitMQ).
    pub fn pop_expired(&mut self, now: Instant, out: &mut Vec<QueuedMessage>) {
        for b in 0..self.lanes.len() {
            while self.lanes[b].front_expired(now) {
                match self.pop_lane(b) {
                    Some(e) => out.push(e),
                    None if self.lanes[b].is_empty() => break,
                    None => {} // Unreadable ones were dropped; look at the new front.
                }
            }
        }
    }

    /// The earliest deadline among the heads.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lanes.iter().filter_map(Lane::front_expires_at).min()
    }

    /// Removes everything.
    pub fn take_all(&mut self) -> Taken {
        self.len = 0;
        self.bytes = 0;
        self.resident_bytes = 0;
        let mut taken = Taken::default();
        for lane in self.lanes.iter_mut().rev() {
            taken.resident.extend(lane.mem.drain(..));
            taken.resident.extend(lane.held.drain(..));
            taken
                .paged
                .extend(lane.paged.drain(..).filter(|p| !p.held()).map(|p| p.seq));
        }
        taken
    }

    /// Every message's body and redelivered flag, in delivery order, paged ones read back
    /// without changing anything.
    #[cfg(test)]
    pub fn contents_for_test(&self) -> Vec<(bytes::Bytes, bool)> {
        let mut out = Vec::new();
        for lane in self.lanes.iter().rev() {
            out.extend(lane.mem.iter().map(|e| (e.msg.body.clone(), e.redelivered)));
            let wanted: Vec<u64> = lane
                .paged
                .iter()
                .filter(|p| !p.held())
                .map(|p| p.seq)
                .collect();
            let mut records = match (&self.pager, wanted.is_empty()) {
                (Some(pager), false) => {
                    let mut cursor = lane.cursor;
                    pager
                        .store
                        .store
                        .read_back(pager.store.id, &mut cursor, &wanted)
                }
                _ => Vec::new(),
            }
            .into_iter()
            .peekable();
            let mut held = lane.held.iter();
            for p in &lane.paged {
                let body = if p.held() {
                    held.next().map(|e| e.msg.body.clone())
                } else {
                    records.next_if(|r| r.seq == p.seq).map(|r| r.body)
                };
                out.extend(body.map(|b| (b, p.redelivered())));
            }
        }
        out
    }
}
