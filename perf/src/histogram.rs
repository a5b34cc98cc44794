//! A log-linear latency histogram: constant memory, about 1.6 % relative precision.
//!
//! Values below 128 ns are counted exactly; above that each power of two is split into 64
//! buckets, the layout HdrHistogram uses with two significant binary digits fewer. Consumers keep
//! one each (no sharing on the hot path) and the run merges them at the end.

/// Sub-buckets per power of two, as a power of two: 2^6 = 64, so a bucket is at most 1/64 wide.
const HALF_BITS: u32 = 6;
/// Values below `2^(HALF_BITS + 1)` have a bucket of their own.
const EXACT: u64 = 1 << (HALF_BITS + 1);
const HALF: u64 = 1 << HALF_BITS;
const BUCKETS: usize = (EXACT + (64 - HALF_BITS as u64 - 1) * HALF) as usize;

/// Counts of recorded values (nanoseconds), and their exact maximum.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn index_of(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - HALF_BITS;
    let top = value >> shift; // in [HALF, 2 * HALF)
    (EXACT + u64::from(shift - 1) * HALF + (top - HALF)) as usize
}

/// The middle of the bucket at `index`.
fn value_of(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let k = index - EXACT;
    let shift = k / HALF + 1;
    let low = (k % HALF + HALF) << shift;
    low + (1 << shift) / 2
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, nanos: u64) {
        self.counts[index_of(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
        self.sum += u128::from(nanos);
    }

    /// Adds every count of `other` to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact), 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (exact), 0 when empty.
    pub fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            u64::try_from(self.sum / u128::from(self.total)).unwrap_or(u64::MAX)
        }
    }

    /// The value below which `percent` of the recorded values lie (within a bucket's width, and
    /// never above the exact maximum); 0 when empty.
    pub fn percentile(&self, percent: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((percent / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value_of(index).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_within_two_percent() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            let back = value_of(index_of(v));
            let error = back.abs_diff(v) as f64 / v as f64;
            assert!(error <= 0.016, "{v} came back as {back}");
            assert!(index_of(v) < BUCKETS);
            v = v * 3 / 2 + 1;
        }
        assert!(index_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for micros in 1..=10_000u64 {
            h.record(micros * 1_000);
        }
        assert_eq!(h.len(), 10_000);
        assert_eq!(h.max(), 10_000_000);
        for (p, expected) in [(50.0, 5_000_000.0), (99.0, 9_900_000.0)] {
            let got = h.percentile(p) as f64;
            assert!((got - expected).abs() / expected < 0.02, "p{p}: {got}");
        }
        assert_eq!(h.percentile(100.0), 10_000_000);
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_max() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.percentile(50.0), 20);
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let h = Histogram::default();
        assert_eq!((h.percentile(99.0), h.max(), h.mean()), (0, 0, 0));
    }
}
