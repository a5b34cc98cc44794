//! `message_stats` as RabbitMQ's API shows them: counts since the object appeared, and with
//! each a `*_details.rate` in messages per second.
//!
//! The counts are [`QueueStats`] (see `crate::metrics`). A rate needs two samples, so the API
//! keeps the last sample of each object it was asked about and derives the rate from the
//! change since then; a new sample is taken only once [`SAMPLE_INTERVAL`] has passed (RabbitMQ
//! samples every 5 s too), so pollers closer together see the same rate rather than noise.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::metrics::QueueStats;

/// The least time between two samples of one object.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples not refreshed for this long are dropped (their object is gone or unwatched).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The last sample of every object asked about, by key (`queue:/:name`, `vhost:/`).
#[derive(Debug, Default)]
pub(crate) struct Rates {
    samples: Mutex<Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    by_key: HashMap<String, Sample>,
    /// When forgotten samples were last dropped (a sweep over all of them, so not on every
    /// lookup: a listing of N queues looks up N keys).
    swept_at: Option<Instant>,
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    stats: QueueStats,
    /// Rates derived when this sample was taken: publish, deliver_get, ack, redeliver.
    rates: [f64; 4],
}

impl Rates {
    /// The `message_stats` object for `stats`, the counts of the object `key` now.
    pub fn message_stats(&self, key: &str, stats: QueueStats) -> Value {
        self.message_stats_at(key, stats, Instant::now())
    }

    fn message_stats_at(&self, key: &str, stats: QueueStats, now: Instant) -> Value {
        let rates = self.rates(key, stats, now);
        json!({
            "publish": stats.published,
            "publish_details": { "rate": rates[0] },
            "deliver_get": stats.delivered,
            "deliver_get_details": { "rate": rates[1] },
            "ack": stats.acked,
            "ack_details": { "rate": rates[2] },
            "redeliver": stats.redelivered,
            "redeliver_details": { "rate": rates[3] },
        })
    }

    fn rates(&self, key: &str, stats: QueueStats, now: Instant) -> [f64; 4] {
        let mut samples = self.samples.lock();
        let samples = &mut *samples;
        if samples
            .swept_at
            .is_none_or(|t| now.saturating_duration_since(t) >= SAMPLE_INTERVAL)
        {
            samples
                .by_key
                .retain(|_, s| now.saturating_duration_since(s.at) < FORGET_AFTER);
            samples.swept_at = Some(now);
        }
        let Some(last) = samples.by_key.get_mut(key) else {
            samples.by_key.insert(
                key.to_owned(),
                Sample {
                    at: now,
                    stats,
                    rates: [0.0; 4],
                },
            );
            return [0.0; 4];
        };
        let elapsed = now.saturating_duration_since(last.at);
        if elapsed >= SAMPLE_INTERVAL {
            let per_second =
                |new: u64, old: u64| new.saturating_sub(old) as f64 / elapsed.as_secs_f64();
            last.rates = [
                per_second(stats.published, last.stats.published),
                per_second(stats.delivered, last.stats.delivered),
                per_second(stats.acked, last.stats.acked),
                per_second(stats.redelivered, last.stats.redelivered),
            ];
            last.at = now;
            last.stats = stats;
        }
        last.rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(published: u64, delivered: u64) -> QueueStats {
        QueueStats {
            published,
            delivered,
            acked: delivered,
            ..QueueStats::default()
        }
    }

    #[test]
    fn rates_are_the_change_per_second_between_samples_at_least_an_interval_apart() {
        let rates = Rates::default();
        let t0 = Instant::now();
        let first = rates.message_stats_at("q", stats(10, 0), t0);
        assert_eq!(first["publish"], 10);
        assert_eq!(first["publish_details"]["rate"], 0.0);
        // Too soon for a new sample: the rate stays.
        let soon = rates.message_stats_at("q", stats(20, 0), t0 + Duration::from_secs(1));
        assert_eq!(soon["publish"], 20);
        assert_eq!(soon["publish_details"]["rate"], 0.0);
        // 10 s after the first sample: 100 more published, 50 delivered and acked.
        let later = rates.message_stats_at("q", stats(110, 50), t0 + Duration::from_secs(10));
        assert_eq!(later["publish_details"]["rate"], 10.0);
        assert_eq!(later["deliver_get_details"]["rate"], 5.0);
        assert_eq!(later["ack_details"]["rate"], 5.0);
        assert_eq!(later["redeliver_details"]["rate"], 0.0);
        // Another object has its own samples.
        let other = rates.message_stats_at("r", stats(5, 5), t0 + Duration::from_secs(10));
        assert_eq!(other["publish_details"]["rate"], 0.0);
        // Unwatched samples are forgotten.
        rates.message_stats_at(
            "r",
            stats(5, 5),
            t0 + FORGET_AFTER + Duration::from_secs(11),
        );
        assert!(!rates.samples.lock().by_key.contains_key("q"));
    }
}
