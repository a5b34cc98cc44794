//! Per-listener metrics through the [`metrics`] facade: the application installs a recorder (a
//! Prometheus exporter, say) before it starts its listeners, and every consumed queue reports
//! under the labels `listener` (the listener's id) and `queue`.
//!
//! | name | kind | counts |
//! |---|---|---|
//! | `amqp_listener_handled_total` | counter | deliveries the handler handled (`Ok`) |
//! | `amqp_listener_failed_total` | counter | handler errors, panics and bodies that do not convert, one per attempt |
//! | `amqp_listener_retried_total` | counter | failed deliveries given another attempt: re-published with a delay, or requeued |
//! | `amqp_listener_dead_lettered_total` | counter | failed deliveries given up on: sent to `<queue>.dlq`, or rejected (the broker dead-letters them if the queue has a dead-letter exchange) |
//! | `amqp_listener_in_flight` | gauge | deliveries being handled now |
//! | `amqp_listener_handler_seconds` | histogram | how long the handler ran |

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};

pub(crate) const HANDLED_TOTAL: &str = "amqp_listener_handled_total";
pub(crate) const FAILED_TOTAL: &str = "amqp_listener_failed_total";
pub(crate) const RETRIED_TOTAL: &str = "amqp_listener_retried_total";
pub(crate) const DEAD_LETTERED_TOTAL: &str = "amqp_listener_dead_lettered_total";
pub(crate) const IN_FLIGHT: &str = "amqp_listener_in_flight";
pub(crate) const HANDLER_SECONDS: &str = "amqp_listener_handler_seconds";

/// What became of a delivery, as far as the metrics tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Handled: acked (or left to the handler, with manual acks).
    Handled,
    /// Failed, and left to the handler (manual acks) or already gone (no acks).
    Failed,
    /// Failed, and given another attempt.
    Retried,
    /// Failed, and given up on.
    DeadLettered,
}

/// The metric handles of one listener's queue, registered once rather than per delivery.
pub(crate) struct ListenerMetrics {
    handled: Counter,
    failed: Counter,
    retried: Counter,
    dead_lettered: Counter,
    in_flight: Gauge,
    handler_seconds: Histogram,
}

impl ListenerMetrics {
    /// Registers the handles with the recorder installed now (none: they record nothing).
    pub(crate) fn new(listener: &str, queue: &str) -> Self {
        let labels = vec![
            Label::new("listener", listener.to_owned()),
            Label::new("queue", queue.to_owned()),
        ];
        Self {
            handled: metrics::counter!(HANDLED_TOTAL, labels.clone()),
            failed: metrics::counter!(FAILED_TOTAL, labels.clone()),
            retried: metrics::counter!(RETRIED_TOTAL, labels.clone()),
            dead_lettered: metrics::counter!(DEAD_LETTERED_TOTAL, labels.clone()),
            in_flight: metrics::gauge!(IN_FLIGHT, labels.clone()),
            handler_seconds: metrics::histogram!(HANDLER_SECONDS, labels),
        }
    }

    /// Counts a delivery in flight until the returned guard is dropped (also when the handler's
    /// task is aborted at a shutdown timeout).
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.increment(1.0);
        InFlight(&self.in_flight)
    }

    pub(crate) fn handler_ran(&self, took: Duration) {
        self.handler_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn settled(&self, fate: Fate) {
        match fate {
            Fate::Handled => self.handled.increment(1),
            Fate::Failed => self.failed.increment(1),
            Fate::Retried => {
                self.failed.increment(1);
                self.retried.increment(1);
            }
            Fate::DeadLettered => {
                self.failed.increment(1);
                self.dead_lettered.increment(1);
            }
        }
    }
}

/// Takes one delivery off [`IN_FLIGHT`] when dropped.
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
