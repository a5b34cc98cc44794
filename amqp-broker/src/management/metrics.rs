//! `GET /metrics`: the broker's counters in Prometheus' text exposition format (version 0.0.4).
//!
//! Served without authentication, as RabbitMQ's prometheus plugin serves its port 15692:
//! scrapers carry no credentials. Names are RabbitMQ's where it has the same metric, with the
//! prefix `amqp_broker_` instead of `rabbitmq_`, so that one Prometheus can scrape both without
//! the series mixing (the README lists them, and a relabel rule that maps them back).

use std::fmt::{Display, Write as _};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::Shared;
use crate::metrics::{BUCKET_BOUNDS_NANOS, HistogramSnapshot, QueueStats};
use crate::queue::Depth;
use crate::vhost::Vhost;

/// The exposition format's media type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let text = render(&Snapshot::of(&shared.vhosts()));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

/// Every number read once, before writing: the format wants each family in one block, and the
/// families are written one after the other across all vhosts and queues.
#[derive(Debug, Default)]
struct Snapshot {
    vhosts: Vec<VhostSnapshot>,
    /// The store's group commits (`None`: the broker keeps nothing on disk).
    store_sync: Option<HistogramSnapshot>,
}

#[derive(Debug)]
struct VhostSnapshot {
    name: String,
    queues: Vec<QueueSnapshot>,
    /// Every queue's counters together, deleted queues included.
    totals: QueueStats,
    connections: u64,
    connections_opened: u64,
    connections_closed: u64,
    channels: u64,
    channels_opened: u64,
    channels_closed: u64,
    confirm_latency: HistogramSnapshot,
}

#[derive(Debug)]
struct QueueSnapshot {
    name: String,
    stats: QueueStats,
    depth: Depth,
}

impl Snapshot {
    fn of(vhosts: &[Arc<Vhost>]) -> Self {
        let mut store_sync: Option<HistogramSnapshot> = None;
        let mut stores_seen = Vec::new();
        for store in vhosts.iter().filter_map(|v| v.store()) {
            // Vhosts may share one store: count each store once.
            if stores_seen.iter().any(|s| Arc::ptr_eq(s, store)) {
                continue;
            }
            stores_seen.push(store.clone());
            *store_sync.get_or_insert_with(HistogramSnapshot::default) +=
                &store.sync_latency().snapshot();
        }
        let vhosts = vhosts
            .iter()
            .map(|v| {
                let m = &v.metrics;
                VhostSnapshot {
                    name: v.name.clone(),
                    queues: v
                        .queues()
                        .iter()
                        .map(|q| QueueSnapshot {
                            name: q.name.to_string(),
                            stats: q.stats(),
                            depth: q.depth(),
                        })
                        .collect(),
                    totals: v.stats(),
                    connections: m.connections_open(),
                    connections_opened: m.connections_opened.get(),
                    connections_closed: m.connections_closed.get(),
                    channels: m.channels_open(),
                    channels_opened: m.channels_opened.get(),
                    channels_closed: m.channels_closed.get(),
                    confirm_latency: m.confirm_latency.snapshot(),
                }
            })
            .collect();
        Self { vhosts, store_sync }
    }
}

/// A per-queue family: name, type, help, and the value it reads.
type QueueFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueSnapshot) -> u64,
);

const QUEUE_FAMILIES: &[QueueFamily] = &[
    (
        "amqp_broker_queue_messages_published_total",
        "counter",
        "Messages routed into the queue.",
        |q| q.stats.published,
    ),
    (
        "amqp_broker_queue_messages_delivered_total",
        "counter",
        "Messages delivered to consumers or fetched with basic.get (redeliveries included).",
        |q| q.stats.delivered,
    ),
    (
        "amqp_broker_queue_messages_acked_total",
        "counter",
        "Deliveries acknowledged by clients.",
        |q| q.stats.acked,
    ),
    (
        "amqp_broker_queue_messages_redelivered_total",
        "counter",
        "Deliveries of messages delivered before (redelivered flag set).",
        |q| q.stats.redelivered,
    ),
    (
        "amqp_broker_queue_messages_dead_lettered_total",
        "counter",
        "Messages that left the queue for its dead-letter exchange.",
        |q| q.stats.dead_lettered,
    ),
    (
        "amqp_broker_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers.",
        |q| q.depth.ready,
    ),
    (
        "amqp_broker_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged.",
        |q| q.depth.unacked,
    ),
    (
        "amqp_broker_queue_messages_ready_bytes",
        "gauge",
        "Size in bytes of the bodies of ready messages.",
        |q| q.depth.ready_bytes,
    ),
    (
        "amqp_broker_queue_messages_unacked_bytes",
        "gauge",
        "Size in bytes of the bodies of unacknowledged messages.",
        |q| q.depth.unacked_bytes,
    ),
    (
        "amqp_broker_queue_consumers",
        "gauge",
        "Consumers on the queue.",
        |q| q.depth.consumers,
    ),
];

/// A per-vhost family: name, type, help, and the value it reads.
type VhostFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&VhostSnapshot) -> u64,
);

const VHOST_FAMILIES: &[VhostFamily] = &[
    ("amqp_broker_queues", "gauge", "Queues in the vhost.", |v| {
        v.queues.len() as u64
    }),
    (
        "amqp_broker_vhost_messages_published_total",
        "counter",
        "Messages routed into the vhost's queues (deleted queues included).",
        |v| v.totals.published,
    ),
    (
        "amqp_broker_vhost_messages_delivered_total",
        "counter",
        "Messages delivered from the vhost's queues (deleted queues included).",
        |v| v.totals.delivered,
    ),
    (
        "amqp_broker_vhost_messages_acked_total",
        "counter",
        "Deliveries from the vhost's queues acknowledged (deleted queues included).",
        |v| v.totals.acked,
    ),
    (
        "amqp_broker_vhost_messages_redelivered_total",
        "counter",
        "Redeliveries from the vhost's queues (deleted queues included).",
        |v| v.totals.redelivered,
    ),
    (
        "amqp_broker_vhost_messages_dead_lettered_total",
        "counter",
        "Messages dead-lettered from the vhost's queues (deleted queues included).",
        |v| v.totals.dead_lettered,
    ),
    (
        "amqp_broker_connections",
        "gauge",
        "Connections currently open.",
        |v| v.connections,
    ),
    (
        "amqp_broker_connections_opened_total",
        "counter",
        "Connections opened.",
        |v| v.connections_opened,
    ),
    (
        "amqp_broker_connections_closed_total",
        "counter",
        "Connections closed or dropped.",
        |v| v.connections_closed,
    ),
    (
        "amqp_broker_channels",
        "gauge",
        "Channels currently open.",
        |v| v.channels,
    ),
    (
        "amqp_broker_channels_opened_total",
        "counter",
        "Channels opened.",
        |v| v.channels_opened,
    ),
    (
        "amqp_broker_channels_closed_total",
        "counter",
        "Channels closed.",
        |v| v.channels_closed,
    ),
];

/// The whole exposition.
fn render(s: &Snapshot) -> String {
    let mut out = Text::default();
    for (name, kind, help, value) in QUEUE_FAMILIES {
        out.family(name, kind, help);
        for v in &s.vhosts {
            for q in &v.queues {
                out.sample(name, &[("vhost", &v.name), ("queue", &q.name)], value(q));
            }
        }
    }
    for (name, kind, help, value) in VHOST_FAMILIES {
        out.family(name, kind, help);
        for v in &s.vhosts {
            out.sample(name, &[("vhost", &v.name)], value(v));
        }
    }
    let name = "amqp_broker_confirm_latency_seconds";
    out.family(
        name,
        "histogram",
        "From a confirmed message's last frame to its basic.ack or basic.nack being written \
         (includes the wait for the store's sync for persisted messages).",
    );
    for v in &s.vhosts {
        out.histogram(name, &[("vhost", &v.name)], &v.confirm_latency);
    }
    if let Some(sync) = &s.store_sync {
        let name = "amqp_broker_store_sync_seconds";
        out.family(
            name,
            "histogram",
            "Duration of the message store's group commits: writing and fsyncing every dirty log.",
        );
        out.histogram(name, &[], sync);
    }
    out.0
}

/// The exposition being written.
#[derive(Debug, Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"");
                escape_label_value(&mut self.0, text);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// `_bucket` lines (cumulative, `le` in seconds, ending with `+Inf`), `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative += count;
            let le = match BUCKET_BOUNDS_NANOS.get(i) {
                Some(&nanos) => seconds(nanos).to_string(),
                None => "+Inf".to_owned(),
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, seconds(h.sum_nanos));
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// A label value as the format writes it: `\`, `"` and newlines escaped.
fn escape_label_value(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Text::default();
        out.sample("m", &[("queue", "a\"b\\c\nd")], 1);
        assert_eq!(out.0, "m{queue=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = Text::default();
        out.histogram("lat_seconds", &[("vhost", "/")], &h.snapshot());
        let lines: Vec<&str> = out.0.lines().collect();
        assert_eq!(lines[0], "lat_seconds_bucket{vhost=\"/\",le=\"0.0001\"} 1");
        assert_eq!(lines[5], "lat_seconds_bucket{vhost=\"/\",le=\"0.005\"} 2");
        assert_eq!(lines[15], "lat_seconds_bucket{vhost=\"/\",le=\"10\"} 2");
        assert_eq!(lines[16], "lat_seconds_bucket{vhost=\"/\",le=\"+Inf\"} 3");
        assert_eq!(lines[17], "lat_seconds_sum{vhost=\"/\"} 60.00305");
        assert_eq!(lines[18], "lat_seconds_count{vhost=\"/\"} 3");
    }

    #[test]
    fn a_broker_without_a_store_has_no_sync_histogram() {
        let text = render(&Snapshot::of(&[Vhost::new("/", None)]));
        assert!(text.contains("amqp_broker_connections{vhost=\"/\"} 0\n"));
        assert!(text.contains("amqp_broker_confirm_latency_seconds_count{vhost=\"/\"} 0\n"));
        assert!(!text.contains("amqp_broker_store_sync_seconds"));
    }
}
