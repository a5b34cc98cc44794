//! A circuit breaker for listeners (after MassTransit's kill switch): when too many of the recent
//! deliveries fail (the database is down, a downstream service times out), the listener stops
//! consuming for a cool-down instead of burning through the queue into the dead-letter queue,
//! then tries again.
//!
//! ```text
//! closed ── failures/calls ≥ ratio over the window (with at least min_calls) ──▶ open
//! open   ── consumers cancelled, prefetched messages back in the queue; after cool_down ──▶ half-open
//! half-open ── the next delivery succeeds ──▶ closed;  fails ──▶ open again
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// When a listener stops consuming, and for how long.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
/// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
/// use std::time::Duration;
/// use amqp_core::{CircuitBreaker, Connection, Listener, ListenerError, Queue};
///
/// let conn = Connection::connect(&broker.amqp_url()).await?;
/// conn.declare(Queue::durable("payments")).await?;
/// let listener = Listener::on("payments")
///     // Half of at least 10 deliveries in the last 30 s failed: pause for a minute.
///     .circuit_breaker(
///         CircuitBreaker::new()
///             .failure_ratio(0.5)
///             .min_calls(10)
///             .window(Duration::from_secs(30))
///             .cool_down(Duration::from_secs(60)),
///     )
///     .handler(|_payment: String| async { Ok::<_, ListenerError>(()) })
///     .start(&conn)
///     .await?;
/// listener.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircuitBreaker {
    failure_ratio: f64,
    min_calls: u32,
    window: Duration,
    cool_down: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreaker {
    /// Opens when half of at least 10 deliveries in 10 s failed; cools down for 30 s.
    pub fn new() -> Self {
        Self {
            failure_ratio: 0.5,
            min_calls: 10,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(30),
        }
    }

    /// The share of failed deliveries (0.0 to 1.0) that opens the breaker (default 0.5).
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// How many deliveries the window must hold before the ratio counts (default 10).
    pub fn min_calls(mut self, calls: u32) -> Self {
        self.min_calls = calls.max(1);
        self
    }

    /// How far back outcomes count (default 10 s).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long the listener stops consuming once open (default 30 s).
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

/// A breaker as `#[rabbit_listener(circuit_breaker(...))]` wrote it (checked there).
#[doc(hidden)]
pub const fn circuit_breaker(
    failure_percent: u32,
    min_calls: u32,
    window_ms: u64,
    cool_down_ms: u64,
) -> CircuitBreaker {
    CircuitBreaker {
        failure_ratio: failure_percent as f64 / 100.0,
        min_calls,
        window: Duration::from_millis(window_ms),
        cool_down: Duration::from_millis(cool_down_ms),
    }
}

/// A listener's breaker while it runs, shared by its consumers.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: CircuitBreaker,
    state: Mutex<State>,
    /// `Some(until)` while open; consumers watch it to pause.
    open: watch::Sender<Option<Instant>>,
}

#[derive(Debug, Default)]
struct State {
    /// Recent outcomes (when, failed), oldest first.
    outcomes: VecDeque<(Instant, bool)>,
    failures: usize,
    /// After a cool-down: the next outcome closes or re-opens.
    half_open: bool,
}

impl Breaker {
    pub(crate) fn new(settings: CircuitBreaker) -> Self {
        Self {
            settings,
            state: Mutex::default(),
            open: watch::channel(None).0,
        }
    }

    /// Watches for the breaker opening.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.open.subscribe()
    }

    /// Counts a handled delivery; may open the breaker.
    pub(crate) fn record(&self, queue: &str, failed: bool) {
        let now = Instant::now();
        let mut state = self.state.lock();
        if self.open.borrow().is_some() {
            // Finished while opening: it says nothing about after the cool-down.
            return;
        }
        if state.half_open {
            state.half_open = false;
            if failed {
                drop(state);
                self.trip(queue, now, "the trial delivery after the cool-down failed");
            } else {
                tracing::info!(queue, "circuit breaker closed: consuming normally");
            }
            return;
        }
        state.outcomes.push_back((now, failed));
        state.failures += usize::from(failed);
        while let Some(&(at, was_failure)) = state.outcomes.front() {
            if now.duration_since(at) <= self.settings.window {
                break;
            }
            state.outcomes.pop_front();
            state.failures -= usize::from(was_failure);
        }
        let calls = state.outcomes.len();
        let ratio = state.failures as f64 / calls as f64;
        if calls >= self.settings.min_calls as usize && ratio >= self.settings.failure_ratio {
            let why = format!(
                "{} of the last {calls} deliveries failed within {:?}",
                state.failures, self.settings.window
            );
            state.outcomes.clear();
            state.failures = 0;
            drop(state);
            self.trip(queue, now, &why);
        }
    }

    fn trip(&self, queue: &str, now: Instant, why: &str) {
        let until = now + self.settings.cool_down;
        tracing::warn!(
            queue,
            "circuit breaker open: {why}; not consuming for {:?}",
            self.settings.cool_down
        );
        self.open.send_replace(Some(until));
    }

    /// Called by each consumer when the cool-down is over: the first one half-opens the breaker.
    pub(crate) fn resume(&self) {
        let mut state = self.state.lock();
        if self
            .open
            .borrow()
            .is_some_and(|until| until <= Instant::now())
        {
            state.half_open = true;
            self.open.send_replace(None);
            tracing::info!("circuit breaker half-open: consuming again on trial");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_over_the_ratio_then_half_opens() {
        let breaker = Breaker::new(
            CircuitBreaker::new()
                .failure_ratio(0.5)
                .min_calls(4)
                .window(Duration::from_secs(10))
                .cool_down(Duration::from_secs(5)),
        );
        let open = breaker.subscribe();
        for failed in [false, true, false] {
            breaker.record("q", failed);
        }
        assert!(open.borrow().is_none(), "too few calls yet");
        breaker.record("q", true);
        let until = open.borrow().expect("2 of 4 failed: open");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(until <= Instant::now());
        breaker.resume();
        assert!(open.borrow().is_none());
        breaker.record("q", true);
        assert!(open.borrow().is_some(), "the trial failed: open again");
        tokio::time::advance(Duration::from_secs(5)).await;
        breaker.resume();
        breaker.record("q", false);
        breaker.record("q", true);
        assert!(
            open.borrow().is_none(),
            "closed, and the window starts afresh"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window() {
        let breaker = Breaker::new(
            CircuitBreaker::new()
                .min_calls(2)
                .window(Duration::from_secs(1)),
        );
        breaker.record("q", true);
        tokio::time::advance(Duration::from_secs(2)).await;
        breaker.record("q", true);
        assert!(
            breaker.subscribe().borrow().is_none(),
            "one failure in the window is under min_calls"
        );
    }
}
