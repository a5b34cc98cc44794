//! Flow control: the memory alarm that blocks publishers, as RabbitMQ's does.
//!
//! Every message body the broker accepts is wrapped (without a copy) in a [`Bytes`] whose owner
//! counts its length in and, when the last clone is dropped, out again: whatever holds a body —
//! a queue, an unacked delivery, the delayed exchange, a frame on its way out — keeps it counted,
//! and a body shared by several queues counts once. When the count reaches the high-water mark
//! the alarm goes on: connections that publish stop being read (their client is sent
//! `connection.blocked` if it asked for it) while consumers on other connections go on draining
//! the queues. It goes off, and they are read again (`connection.unblocked`), once the count
//! falls below [`RESUME_PERCENT`] of the mark: a margin so that the alarm does not flap at every
//! message around the mark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

/// The alarm goes off once the counted bytes are below this share of the high-water mark.
pub(crate) const RESUME_PERCENT: u64 = 90;

/// The default high-water mark: 40% of the machine's memory (RabbitMQ's default share), or
/// 1 GiB where that cannot be read.
pub(crate) fn default_high_watermark_bytes() -> u64 {
    const FALLBACK_BYTES: u64 = 1 << 30;
    total_memory_bytes().map_or(FALLBACK_BYTES, |total| total / 10 * 4)
}

/// `MemTotal` from `/proc/meminfo` (Linux).
fn total_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The reason sent in `connection.blocked`, RabbitMQ's words for a memory alarm.
pub(crate) const BLOCKED_REASON: &str = "low on memory";

/// Counts the bytes of message bodies the broker holds and raises the alarm.
#[derive(Debug)]
pub(crate) struct MemoryMonitor {
    /// Bytes of the bodies alive now.
    used_bytes: AtomicU64,
    /// The alarm goes on at this many bytes.
    high_watermark_bytes: u64,
    /// And off below this many.
    resume_bytes: u64,
    /// A copy of the alarm's state that the hot path reads without a lock.
    alarmed: AtomicBool,
    /// The alarm as connections watch it (`true`: on). Changed under its own lock, from the
    /// count at that moment, so that concurrent crossings settle on the right state.
    alarm: Mutex<watch::Sender<bool>>,
}

/// A body's buffer, counted while it lives.
struct Counted {
    body: Bytes,
    monitor: Arc<MemoryMonitor>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.monitor.release(self.body.len() as u64);
    }
}

impl MemoryMonitor {
    /// A monitor whose alarm goes on at `high_watermark_bytes` (0: always on, so nothing may be
    /// published, as with RabbitMQ's watermark of 0).
    pub fn new(high_watermark_bytes: u64) -> Arc<Self> {
        let on = high_watermark_bytes == 0;
        Arc::new(Self {
            used_bytes: AtomicU64::new(0),
            high_watermark_bytes,
            resume_bytes: (u128::from(high_watermark_bytes) * u128::from(RESUME_PERCENT) / 100)
                as u64,
            alarmed: AtomicBool::new(on),
            alarm: Mutex::new(watch::Sender::new(on)),
        })
    }

    /// `body`, counted until its last clone is dropped.
    pub fn track(self: &Arc<Self>, body: Bytes) -> Bytes {
        if body.is_empty() {
            return body;
        }
        self.hold(body.len() as u64);
        Bytes::from_owner(Counted {
            body,
            monitor: self.clone(),
        })
    }

    /// Counts `len` bytes held in another form (a delayed message, kept encoded), until
    /// [`MemoryMonitor::release`].
    pub fn hold(&self, len: u64) {
        let used = self.used_bytes.fetch_add(len, Ordering::SeqCst) + len;
        if used >= self.high_watermark_bytes && !self.alarmed.load(Ordering::SeqCst) {
            self.reevaluate();
        }
    }

    /// Stops counting `len` bytes.
    pub fn release(&self, len: u64) {
        let used = self.used_bytes.fetch_sub(len, Ordering::SeqCst) - len;
        if used < self.resume_bytes && self.alarmed.load(Ordering::SeqCst) {
            self.reevaluate();
        }
    }

    /// Sets the alarm from the count as it is now.
    ///
    /// `hold` and `release` look at `alarmed` without the lock, so one of them may skip calling
    /// here just while another call is turning the alarm over (it saw the old state). After each
    /// turn the count is therefore read again, and the state settled from that: with the
    /// sequentially consistent orderings, either the skipping call saw the new state (and came
    /// here itself) or this re-read sees its change. Without it the alarm could stay on with the
    /// queues drained, and publishers blocked for good.
    fn reevaluate(&self) {
        let alarm = self.alarm.lock();
        loop {
            let used = self.used_bytes.load(Ordering::SeqCst);
            let on = if *alarm.borrow() {
                used >= self.resume_bytes
            } else {
                used >= self.high_watermark_bytes
            };
            if !alarm.send_if_modified(|state| std::mem::replace(state, on) != on) {
                return;
            }
            self.alarmed.store(on, Ordering::SeqCst);
            if on {
                tracing::warn!(
                    used_bytes = used,
                    high_watermark_bytes = self.high_watermark_bytes,
                    "memory alarm: message bodies reached the high-water mark; publishers are \
                     blocked until consumers drain the queues"
                );
            } else {
                tracing::info!(used_bytes = used, "memory alarm cleared; publishers resume");
            }
        }
    }

    /// The alarm, for a connection to watch.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm.lock().subscribe()
    }

    /// Bytes of message bodies held now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_goes_on_at_the_mark_and_off_below_the_resume_share() {
        let m = MemoryMonitor::new(1000);
        let alarm = m.subscribe();
        let a = m.track(Bytes::from(vec![0; 600]));
        assert!(!*alarm.borrow());
        let b = m.track(Bytes::from(vec![0; 400]));
        assert!(*alarm.borrow(), "on at 1000 of 1000");
        let shared = b.clone();
        drop(b);
        assert_eq!(m.used_bytes(), 1000, "a clone keeps the body counted");
        drop(shared);
        assert_eq!(m.used_bytes(), 600);
        assert!(!*alarm.borrow(), "off below 900");
        let c = m.track(Bytes::from(vec![0; 350]));
        assert!(!*alarm.borrow(), "950: still below the mark");
        drop((a, c));
        assert_eq!(m.used_bytes(), 0);
    }

    #[test]
    fn hysteresis_keeps_the_alarm_on_between_the_two_marks() {
        let m = MemoryMonitor::new(1000);
        let alarm = m.subscribe();
        let a = m.track(Bytes::from(vec![0; 1000]));
        let small = m.track(Bytes::from(vec![0; 50]));
        drop(small);
        assert!(*alarm.borrow(), "1000 is not below 900");
        drop(a);
        assert!(!*alarm.borrow());
    }

    #[test]
    fn a_zero_mark_blocks_from_the_start() {
        let m = MemoryMonitor::new(0);
        assert!(*m.subscribe().borrow());
    }
}
