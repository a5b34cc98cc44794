//! What the soak counts: message ids confirmed by the broker and ids seen by a consumer (or in
//! the final drain), so that the end can name every confirmed message that never came back.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lapin::BasicProperties;

/// Ids and counters, shared by every worker.
#[derive(Debug, Default)]
pub struct Ledger {
    next_id: AtomicU64,
    confirmed: Mutex<HashSet<u64>>,
    seen: Mutex<HashSet<u64>>,
    /// Deliveries consumed, redeliveries included.
    pub deliveries: AtomicU64,
    /// Publishes answered with `basic.nack`.
    pub nacked: AtomicU64,
    /// Connections reopened after a cut (or any other loss).
    pub reconnects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Connections cut on purpose.
    pub cuts: AtomicU64,
}

impl Ledger {
    /// A fresh message id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The broker confirmed `id`.
    pub fn confirmed(&self, id: u64) {
        self.confirmed.lock().expect("ledger").insert(id);
    }

    /// A delivery of the message with these properties was consumed (or drained).
    pub fn seen(&self, properties: &BasicProperties) {
        Self::add(&self.deliveries, 1);
        if let Some(id) = properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<u64>().ok())
        {
            self.seen.lock().expect("ledger").insert(id);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Up to `n` confirmed ids never seen, smallest first.
    pub fn lost_ids(&self, n: usize) -> Vec<u64> {
        let confirmed = self.confirmed.lock().expect("ledger");
        let seen = self.seen.lock().expect("ledger");
        let mut lost: Vec<u64> = confirmed
            .iter()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        lost.sort_unstable();
        lost.truncate(n);
        lost
    }

    /// (confirmed, distinct ids seen, confirmed but never seen).
    pub fn tally(&self) -> (usize, usize, usize) {
        let confirmed = self.confirmed.lock().expect("ledger");
        let seen = self.seen.lock().expect("ledger");
        let lost = confirmed.iter().filter(|id| !seen.contains(id)).count();
        (confirmed.len(), seen.len(), lost)
    }
}
