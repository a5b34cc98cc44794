//! What a run measured: rates, counts and latency percentiles, as a table or as JSON; and the
//! per-second progress lines on stderr.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::counters::Counters;
use crate::histogram::Histogram;
use crate::options::RunOptions;
use crate::run::redact;

/// The result of one run. Rates are over the run's duration (until the stop signal).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The broker, without its password.
    pub uri: String,
    /// The settings, in words.
    pub settings: String,
    /// The queue used.
    pub queue: String,
    /// Seconds from the first publish to the stop signal.
    pub elapsed_secs: f64,
    /// Messages published (a producer may finish one publish after the stop signal).
    pub published: u64,
    /// Messages published before the stop signal, per second of `elapsed_secs`.
    pub publish_rate: f64,
    /// Publisher confirms received as acks (including those that came after the stop).
    pub confirmed: u64,
    /// Publisher confirms received as nacks.
    pub nacked: u64,
    /// Deliveries received (including any in flight at the stop signal).
    pub consumed: u64,
    /// Deliveries received before the stop signal, per second of `elapsed_secs`.
    pub consume_rate: f64,
    /// End-to-end latency (send to delivery), in microseconds, over every delivery received.
    pub latency_us: Latency,
    /// Idle connections held open during the run.
    pub idle_connections: usize,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Deliveries measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1_000.0
}

impl Latency {
    fn of(h: &Histogram) -> Self {
        Self {
            count: h.len(),
            mean: micros(h.mean()),
            p50: micros(h.percentile(50.0)),
            p95: micros(h.percentile(95.0)),
            p99: micros(h.percentile(99.0)),
            max: micros(h.max()),
        }
    }
}

impl Report {
    /// Sums a run up.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        options: &RunOptions,
        queue: &str,
        elapsed: Duration,
        published_by_stop: u64,
        consumed_by_stop: u64,
        counters: &Counters,
        latencies: &Histogram,
        idle_connections: usize,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Self {
            uri: redact(&options.uri),
            settings: options.summary(),
            queue: queue.to_owned(),
            elapsed_secs: secs,
            published: Counters::get(&counters.published),
            publish_rate: published_by_stop as f64 / secs,
            confirmed: Counters::get(&counters.confirmed),
            nacked: Counters::get(&counters.nacked),
            consumed: Counters::get(&counters.consumed),
            consume_rate: consumed_by_stop as f64 / secs,
            latency_us: Latency::of(latencies),
            idle_connections,
        }
    }

    /// The human form: a heading and two small tables.
    pub fn table(&self) -> String {
        let l = &self.latency_us;
        format!(
            "amqp-perf against {uri}: {settings}\n\
             queue {queue}, {secs:.2} s\n\
             \n\
             {:<10} {:>12} {:>14}\n\
             {:<10} {:>12} {:>14.0}\n\
             {:<10} {:>12} {:>14}\n\
             {:<10} {:>12} {:>14.0}\n\
             \n\
             latency (µs) {:>10} {:>10} {:>10} {:>10} {:>10}\n\
             {:>23.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}\n",
            "",
            "messages",
            "msg/s",
            "published",
            self.published,
            self.publish_rate,
            "confirmed",
            format!("{}", self.confirmed),
            format!("nacked {}", self.nacked),
            "consumed",
            self.consumed,
            self.consume_rate,
            "mean",
            "p50",
            "p95",
            "p99",
            "max",
            l.mean,
            l.p50,
            l.p95,
            l.p99,
            l.max,
            uri = self.uri,
            settings = self.settings,
            queue = self.queue,
            secs = self.elapsed_secs,
        )
    }
}

/// Prints a line a second on stderr (PerfTest's running commentary): rates over the last second.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    next: Instant,
    last_published: u64,
    last_consumed: u64,
    silent: bool,
}

impl Progress {
    /// Starts the clock; `silent` prints nothing.
    pub fn new(started: Instant, silent: bool) -> Self {
        Self {
            started,
            next: started + Duration::from_secs(1),
            last_published: 0,
            last_consumed: 0,
            silent,
        }
    }

    /// Prints a line when a second has passed since the last one.
    pub fn tick(&mut self, counters: &Counters) {
        let now = Instant::now();
        if self.silent || now < self.next {
            return;
        }
        let published = Counters::get(&counters.published);
        let consumed = Counters::get(&counters.consumed);
        eprintln!(
            "time {:>5.1} s, sent {:>9} msg/s, received {:>9} msg/s",
            (now - self.started).as_secs_f64(),
            published - self.last_published,
            consumed - self.last_consumed,
        );
        self.last_published = published;
        self.last_consumed = consumed;
        self.next += Duration::from_secs(1);
    }
}
