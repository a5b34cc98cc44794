//! The ready messages of one queue: one FIFO per priority (a single one without
//! `x-max-priority`), with the counts `x-max-length` and `x-max-length-bytes` are checked against.

use std::collections::VecDeque;
use std::time::Instant;

use crate::message::QueuedMessage;

/// Ready messages by priority, each priority in `seq` order.
#[derive(Debug)]
pub(crate) struct Ready {
    /// Index = priority; the highest non-empty one is served first.
    buckets: Vec<VecDeque<QueuedMessage>>,
    /// Messages in all buckets.
    len: usize,
    /// Body bytes in all buckets (`x-max-length-bytes` counts bodies, as RabbitMQ does).
    bytes: u64,
}

impl Ready {
    /// A queue with priorities `0..=max_priority` (0: no priorities).
    pub fn new(max_priority: u8) -> Self {
        Self {
            buckets: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }

    fn bucket(&self, e: &QueuedMessage) -> usize {
        let p = e.msg.properties.priority().unwrap_or(0) as usize;
        p.min(self.buckets.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a new message (the newest of its priority).
    pub fn push_back(&mut self, e: QueuedMessage) {
        let b = self.bucket(&e);
        self.count_in(&e);
        self.buckets[b].push_back(e);
    }

    /// Puts a message back at its original position (by `seq`) within its priority.
    pub fn insert_in_order(&mut self, e: QueuedMessage) {
        let b = self.bucket(&e);
        self.count_in(&e);
        let bucket = &mut self.buckets[b];
        let at = bucket.partition_point(|x| x.seq < e.seq);
        bucket.insert(at, e);
    }

    /// Takes the oldest message of the highest priority.
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let e = self.buckets.iter_mut().rev().find_map(|b| b.pop_front())?;
        self.count_out(&e);
        Some(e)
    }

    /// Takes every message whose deadline passed and that sits at the head of its priority
    /// (behind an unexpired one a message waits for its turn, as in RabbitMQ).
    pub fn pop_expired(&mut self, now: Instant, out: &mut Vec<QueuedMessage>) {
        for b in 0..self.buckets.len() {
            while self.buckets[b].front().is_some_and(|e| e.expired_at(now)) {
                let e = self.buckets[b].pop_front().expect("checked non-empty");
                self.count_out(&e);
                out.push(e);
            }
        }
    }

    /// The earliest deadline among the heads.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.buckets
            .iter()
            .filter_map(|b| b.front().and_then(|e| e.expires_at))
            .min()
    }

    /// Removes everything, oldest first within each priority.
    pub fn take_all(&mut self) -> Vec<QueuedMessage> {
        self.len = 0;
        self.bytes = 0;
        self.buckets
            .iter_mut()
            .rev()
            .flat_map(std::mem::take)
            .collect()
    }

    /// Every message, in delivery order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.buckets.iter().rev().flatten()
    }

    fn count_in(&mut self, e: &QueuedMessage) {
        self.len += 1;
        self.bytes += e.msg.body.len() as u64;
    }

    fn count_out(&mut self, e: &QueuedMessage) {
        self.len -= 1;
        self.bytes -= e.msg.body.len() as u64;
    }
}
