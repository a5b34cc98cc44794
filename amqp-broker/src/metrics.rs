//! What the broker counts for monitoring: per-queue message counters, per-vhost connection and
//! channel counts, and latency histograms. `/metrics` (see `management::metrics`) and the
//! management API's `message_stats` read them.
//!
//! The counting sits on the hot path (every publish, delivery and ack), so it is relaxed atomics
//! only: no lock, no allocation per message. A counter is one `fetch_add`; a histogram
//! observation is a search over [`BUCKET_BOUNDS_NANOS`] and two `fetch_add`s. A reader sees
//! every number exactly but not one instant across numbers, which is all a scrape needs.

use std::ops::AddAssign;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Counts one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What happened to a queue's messages since it was declared (or, for a vhost, to all of its
/// queues', deleted ones included). The management API's `message_stats` and `/metrics`'s
/// `amqp_broker_queue_messages_*_total` are these numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueStats {
    /// Messages routed into the queue (publishes, dead-lettered and delayed messages arriving).
    pub published: u64,
    /// Messages written to clients: deliveries to consumers and `basic.get-ok`, with or
    /// without ack, redeliveries included.
    pub delivered: u64,
    /// Deliveries the client acknowledged (`basic.ack`).
    pub acked: u64,
    /// Deliveries of messages delivered before (sent with `redelivered = true`).
    pub redelivered: u64,
    /// Messages that left the queue for its dead-letter exchange (rejected, expired, over a
    /// length limit or the delivery limit); only queues with `x-dead-letter-exchange` count.
    pub dead_lettered: u64,
}

impl AddAssign for QueueStats {
    fn add_assign(&mut self, other: Self) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.redelivered += other.redelivered;
        self.dead_lettered += other.dead_lettered;
    }
}

/// A queue's message counters (see [`QueueStats`] for what each counts).
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub published: Counter,
    pub delivered: Counter,
    pub acked: Counter,
    pub redelivered: Counter,
    pub dead_lettered: Counter,
}

impl QueueCounters {
    /// Counts a message written to a client (a delivery or a `get-ok`).
    pub fn delivered(&self, redelivered: bool) {
        self.delivered.inc();
        if redelivered {
            self.redelivered.inc();
        }
    }

    /// The counts now.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            published: self.published.get(),
            delivered: self.delivered.get(),
            acked: self.acked.get(),
            redelivered: self.redelivered.get(),
            dead_lettered: self.dead_lettered.get(),
        }
    }
}

/// A vhost's connection and channel churn and its publishers' confirm latency.
#[derive(Debug, Default)]
pub(crate) struct VhostMetrics {
    /// Connections that completed the handshake.
    pub connections_opened: Counter,
    /// Connections that ended (closed by either side, or dropped).
    pub connections_closed: Counter,
    /// `channel.open`s answered.
    pub channels_opened: Counter,
    /// Channels closed (by either side, or with their connection).
    pub channels_closed: Counter,
    /// From a confirmed message's last frame to its `basic.ack` (or `nack`) being written:
    /// routing, plus the wait for the store's sync when the message is persisted.
    pub confirm_latency: Histogram,
}

impl VhostMetrics {
    /// Counts a connection as open until the returned guard is dropped (however the
    /// connection's task ends).
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections_opened.inc();
        OpenConnection(self.clone())
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        open(&self.connections_opened, &self.connections_closed)
    }

    /// Channels open now.
    pub fn channels_open(&self) -> u64 {
        open(&self.channels_opened, &self.channels_closed)
    }
}

/// Opened minus closed; read closed first, so a close that races the reads never makes the
/// difference negative.
fn open(opened: &Counter, closed: &Counter) -> u64 {
    let closed = closed.get();
    opened.get().saturating_sub(closed)
}

/// Counts its connection closed when dropped (see [`VhostMetrics::connection_opened`]).
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<VhostMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_closed.inc();
    }
}

/// Upper bounds of the histogram buckets (Prometheus' `le`), in nanoseconds: 100 µs to 10 s in
/// 1-2.5-5 steps, which covers a confirm routed in memory as well as an fsync on a slow disk.
pub(crate) const BUCKET_BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram with fixed buckets ([`BUCKET_BOUNDS_NANOS`] and one for anything
/// longer), lock-free.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative; the last one is above every bound).
    buckets: [AtomicU64; BUCKET_BOUNDS_NANOS.len() + 1],
    /// The sum of every observation, in nanoseconds (wraps after 584 years of latency).
    sum_nanos: AtomicU64,
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HistogramSnapshot {
    /// Observations per bucket, as in [`Histogram`] (not cumulative).
    pub buckets: [u64; BUCKET_BOUNDS_NANOS.len() + 1],
    /// The sum of every observation, in nanoseconds.
    pub sum_nanos: u64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

impl AddAssign<&HistogramSnapshot> for HistogramSnapshot {
    fn add_assign(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_nanos = self.sum_nanos.wrapping_add(other.sum_nanos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let h = Histogram::default();
        h.observe(Duration::from_nanos(1));
        h.observe(Duration::from_micros(100)); // exactly on the first bound: `le` includes it
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(11)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[BUCKET_BOUNDS_NANOS.len()], 1);
        assert_eq!(s.buckets.iter().sum::<u64>(), 4);
        assert_eq!(s.sum_nanos, 1 + 100_000 + 101_000 + 11_000_000_000);
    }

    #[test]
    fn a_connection_counts_as_open_until_its_guard_drops() {
        let m = Arc::new(VhostMetrics::default());
        let a = m.connection_opened();
        let b = m.connection_opened();
        assert_eq!(m.connections_open(), 2);
        drop(a);
        assert_eq!(m.connections_open(), 1);
        drop(b);
        assert_eq!(
            (m.connections_opened.get(), m.connections_closed.get()),
            (2, 2)
        );
    }

    #[test]
    fn stats_add_up() {
        let q = QueueCounters::default();
        q.published.inc();
        q.delivered(false);
        q.delivered(true);
        q.acked.inc();
        let mut total = q.stats();
        total += q.stats();
        assert_eq!(
            total,
            QueueStats {
                published: 2,
                delivered: 4,
                acked: 2,
                redelivered: 2,
                dead_lettered: 0
            }
        );
    }
}
