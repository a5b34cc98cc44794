//! Retry with back-off through the broker: the policy ([`Retry`]) and the headers a retried or
//! dead-lettered message carries.
//!
//! A listener with a retry policy never retries inside the consumer (that would hold up the
//! queue behind one failing message, as Spring's stateless retry does). When a handler fails, the
//! container re-publishes the message with a delay (publisher confirms, then acks the delivery)
//! and counts the attempt in the [`ATTEMPT_HEADER`]. When the attempts are spent, or the error
//! says it is permanent ([`crate::ListenerError::reject`]), the message goes to
//! `<queue>.dlq` ([`dead_letter_queue`]) with the error in headers, named as Spring's
//! `RepublishMessageRecoverer` names them.
//!
//! How the delay is made (the broker's delayed-message exchange, or TTL wait queues
//! `<queue>.retry.<ms>`) is [`crate::DelayMechanism`]'s business.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};

/// How many attempts have failed so far (1 after the first failure), on a retried message and
/// on one in the dead-letter queue.
pub const ATTEMPT_HEADER: &str = "x-retry-attempt";
/// The failed handler's error text, on a message in `<queue>.dlq`.
pub const EXCEPTION_MESSAGE_HEADER: &str = "x-exception-message";
/// The failed handler's error type (a Rust type name), on a message in `<queue>.dlq`.
pub const EXCEPTION_TYPE_HEADER: &str = "x-exception-type";
/// The exchange the message was first published to (kept across retries).
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-original-exchange";
/// The routing key the message was first published with (kept across retries).
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";

/// The most a delay may be: brokers take TTLs and `x-delay` as 32-bit milliseconds.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// The dead-letter queue of a listener with a retry policy: `<queue>.dlq`.
///
/// ```
/// assert_eq!(amqp_core::retry::dead_letter_queue("orders"), "orders.dlq");
/// ```
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// A retry policy: how many attempts, and how the delay between them grows
/// (`initial`, then times `multiplier` each attempt, never more than `max`).
///
/// The defaults are Spring Boot's listener retry defaults, with a doubling back-off: 3 attempts,
/// 1 s initial delay, multiplier 2, at most 10 s.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use amqp_core::Retry;
///
/// let retry = Retry::attempts(5)
///     .initial(Duration::from_millis(100))
///     .multiplier(2.0)
///     .max(Duration::from_secs(10));
/// // The delay before the second attempt, the third, ...
/// assert_eq!(retry.delay_after(1), Duration::from_millis(100));
/// assert_eq!(retry.delay_after(2), Duration::from_millis(200));
/// assert_eq!(retry.delay_after(3), Duration::from_millis(400));
/// assert_eq!(Retry::attempts(9).max(Duration::from_secs(1)).delay_after(8), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retry {
    /// Attempts in all, the first delivery included (1: no retry, failures go to the dlq).
    max_attempts: u32,
    /// The delay after the first failure.
    initial: Duration,
    /// What each further delay is multiplied by.
    multiplier: f64,
    /// The ceiling for the delay.
    max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// A policy of `max_attempts` attempts in all (the first delivery counts as one).
    pub fn attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            ..Self::default()
        }
    }

    /// The delay after the first failure (default 1 s).
    pub fn initial(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// What each further delay is multiplied by (default 2.0; 1.0 for a fixed delay).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The longest delay (default 10 s).
    pub fn max(mut self, delay: Duration) -> Self {
        self.max = delay;
        self
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the next attempt once `failed` attempts have failed (`failed` ≥ 1),
    /// rounded to whole milliseconds (each distinct delay is one wait queue).
    pub fn delay_after(&self, failed: u32) -> Duration {
        let exponent = i32::try_from(failed.saturating_sub(1)).unwrap_or(i32::MAX);
        let ms = self.initial.as_millis() as f64 * self.multiplier.powi(exponent);
        let capped = ms.min(self.max.as_millis() as f64).max(1.0);
        Duration::from_millis(capped as u64)
    }

    /// What is wrong with the policy, if anything (checked when the listener starts).
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err(
                "max_attempts must be at least 1 (1: no retry, failures go to the dlq)".into(),
            );
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(format!(
                "the multiplier must be a finite number of at least 1.0, not {}",
                self.multiplier
            ));
        }
        if self.initial.is_zero() || self.max.is_zero() {
            return Err("the initial and max delays must be at least 1 ms".into());
        }
        if self.initial > self.max {
            return Err(format!(
                "the initial delay ({:?}) is longer than the max ({:?})",
                self.initial, self.max
            ));
        }
        if self.max > MAX_DELAY {
            return Err(format!("the max delay must be at most {MAX_DELAY:?}"));
        }
        Ok(())
    }
}

/// A policy from the values `#[rabbit_listener(retry(...))]` checked (a `const fn`, for the
/// registered definition's static).
#[doc(hidden)]
pub const fn retry(max_attempts: u32, initial_ms: u64, multiplier: f64, max_ms: u64) -> Retry {
    Retry {
        max_attempts,
        initial: Duration::from_millis(initial_ms),
        multiplier,
        max: Duration::from_millis(max_ms),
    }
}

/// The attempt count a message carries (0 when it has never failed). Any integer type is
/// accepted, since other clients may have written the header.
pub(crate) fn attempts_of(headers: Option<&FieldTable>) -> u32 {
    let value = headers.and_then(|h| h.inner().get(ATTEMPT_HEADER));
    let n: i64 = match value {
        Some(AMQPValue::ShortShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortShortUInt(n)) => (*n).into(),
        Some(AMQPValue::ShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortUInt(n)) => (*n).into(),
        Some(AMQPValue::LongInt(n)) => (*n).into(),
        Some(AMQPValue::LongUInt(n)) => (*n).into(),
        Some(AMQPValue::LongLongInt(n)) => *n,
        _ => 0,
    };
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stop_at_the_max() {
        let r = Retry::attempts(10)
            .initial(Duration::from_millis(100))
            .multiplier(3.0)
            .max(Duration::from_secs(2));
        let delays: Vec<u64> = (1..=5)
            .map(|n| r.delay_after(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 300, 900, 2000, 2000]);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Retry::attempts(0).check().is_err());
        assert!(Retry::attempts(3).multiplier(0.5).check().is_err());
        assert!(Retry::attempts(3).multiplier(f64::NAN).check().is_err());
        assert!(Retry::attempts(3).initial(Duration::ZERO).check().is_err());
        assert!(
            Retry::attempts(3)
                .initial(Duration::from_secs(20))
                .check()
                .is_err()
        );
        assert!(Retry::attempts(3).check().is_ok());
    }

    #[test]
    fn attempts_are_read_from_any_integer() {
        let mut h = FieldTable::default();
        assert_eq!(attempts_of(Some(&h)), 0);
        h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongInt(4));
        assert_eq!(attempts_of(Some(&h)), 4);
        h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(-3));
        assert_eq!(attempts_of(Some(&h)), 0);
    }
}
