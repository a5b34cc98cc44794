//! Rate limits for listeners: a token bucket shared by all of a listener's consumers, so that a
//! burst in the queue reaches the handler at a steady pace (peak shaving) while publishers go on
//! at full speed and the backlog waits in the broker.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How many messages a listener handles per unit of time, and how many may go at once after a
/// pause (the burst; default 1: evenly spaced).
///
/// Parsed from `"200/s"`, `"30/m"` or `"1000/h"` (what `#[rabbit_listener(rate = "...")]` takes).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use amqp_core::Rate;
///
/// let rate: Rate = "200/s".parse().unwrap();
/// assert_eq!(rate.interval(), Duration::from_millis(5));
/// assert_eq!(Rate::per_minute(30).interval(), Duration::from_secs(2));
/// assert!("200/day".parse::<Rate>().is_err());
/// let bursty = Rate::per_second(100).burst(20);
/// # let _ = bursty;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    count: u32,
    per: Duration,
    burst: u32,
}

impl Rate {
    /// `count` messages per `per` (both at least 1 unit).
    pub fn new(count: u32, per: Duration) -> Self {
        Self {
            count: count.max(1),
            per: per.max(Duration::from_nanos(1)),
            burst: 1,
        }
    }

    /// `count` messages per second.
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` messages per minute.
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// How many messages may be handled at once after an idle spell (default 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// The time one message costs.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

/// `count` per `per_ms` milliseconds, as `#[rabbit_listener(rate = "...")]` wrote it (checked
/// there: both positive).
#[doc(hidden)]
pub const fn rate(count: u32, per_ms: u64) -> Rate {
    Rate {
        count,
        per: Duration::from_millis(per_ms),
        burst: 1,
    }
}

/// Why a rate did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseRateError(String);

impl fmt::Display for ParseRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid rate \"{}\": write a positive count, `/` and a unit `s`, `m` or `h`, e.g. \"200/s\"",
            self.0
        )
    }
}

impl std::error::Error for ParseRateError {}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseRateError(s.to_owned());
        let (count, unit) = s.split_once('/').ok_or_else(error)?;
        let count: u32 = count.trim().parse().map_err(|_| error())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(error()),
        };
        if count == 0 {
            return Err(error());
        }
        Ok(Self::new(count, per))
    }
}

/// A token bucket that reserves: each caller takes a token at once (the balance may go below
/// zero) and sleeps until its token would have been there, so concurrent callers are spaced
/// evenly without waking each other.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    interval: Duration,
    burst: u32,
    /// When the bucket is next empty of debt: a caller's token is ready at `max(now, next)`, and
    /// after it `next` moves on by one interval. `next` never lags more than `burst` intervals
    /// behind now (the bucket holds at most `burst` tokens).
    next: Mutex<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(rate: Rate) -> Self {
        Self {
            interval: rate.interval(),
            burst: rate.burst,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a token.
    pub(crate) async fn acquire(&self) {
        let ready = {
            let now = Instant::now();
            let mut next = self.next.lock();
            let earliest = now
                .checked_sub(self.interval * (self.burst - 1))
                .unwrap_or(now);
            let ready = (*next).max(earliest);
            *next = ready + self.interval;
            ready
        };
        tokio::time::sleep_until(ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!("200/s".parse::<Rate>().unwrap(), Rate::per_second(200));
        assert_eq!(" 30 / m ".parse::<Rate>().unwrap(), Rate::per_minute(30));
        for bad in ["", "200", "0/s", "-1/s", "1.5/s", "200/d", "x/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_callers_and_allows_the_burst() {
        let bucket = TokenBucket::new(Rate::per_second(10).burst(3));
        tokio::time::advance(Duration::from_secs(5)).await;
        let start = Instant::now();
        for _ in 0..3 {
            bucket.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "the burst is free"
        );
        for _ in 0..10 {
            bucket.acquire().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(1100),
            "{took:?}"
        );
    }
}
