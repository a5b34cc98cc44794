//! Counters the producers and consumers bump and the run reads: plain relaxed atomics, since
//! only totals matter and each is written by many tasks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Totals for one run, shared by every producer and consumer task.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages handed to the client library for sending.
    pub published: AtomicU64,
    /// Publisher confirms received as acks.
    pub confirmed: AtomicU64,
    /// Publisher confirms received as nacks.
    pub nacked: AtomicU64,
    /// Deliveries received by consumers.
    pub consumed: AtomicU64,
    /// Set when producers must stop publishing and consumers stop consuming.
    pub stop: AtomicBool,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Whether the run is over.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}
