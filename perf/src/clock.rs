//! The send-time stamp every message carries.
//!
//! Producers and consumers run in the same process, so one monotonic base (`Instant`) serves both:
//! a stamp is the nanoseconds since that base, immune to wall-clock jumps, and a consumer's
//! latency is simply `now - stamp`.

use std::sync::LazyLock;
use std::time::Instant;

/// Bytes at the start of each body that hold the stamp (little-endian `u64`).
pub const STAMP_BYTES: usize = 8;

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the process-wide base. Saturates after ~584 years.
pub fn now_nanos() -> u64 {
    u64::try_from(BASE.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Writes the current stamp into the first [`STAMP_BYTES`] of `body` (which must be that long).
pub fn stamp(body: &mut [u8]) {
    body[..STAMP_BYTES].copy_from_slice(&now_nanos().to_le_bytes());
}

/// The latency of a stamped body, in nanoseconds; `None` for a body too short to carry a stamp
/// (a message this tool did not send).
pub fn latency_nanos(body: &[u8]) -> Option<u64> {
    let sent = u64::from_le_bytes(body.get(..STAMP_BYTES)?.try_into().ok()?);
    Some(now_nanos().saturating_sub(sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_as_a_small_latency() {
        let mut body = [0u8; 16];
        stamp(&mut body);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let latency = latency_nanos(&body).expect("stamped");
        assert!(latency >= 2_000_000, "latency {latency} ns");
        assert!(latency < 10_000_000_000, "latency {latency} ns");
    }

    #[test]
    fn a_short_body_has_no_latency() {
        assert_eq!(latency_nanos(&[1, 2, 3]), None);
    }
}
