//! [`MemoryStore`]: idempotency records in this process, bounded and expiring.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{BoxError, Claim, IdempotencyStore, token};

/// Idempotency records in memory: for one process (several listeners and consumers in it), lost
/// on restart. Holds at most `capacity` records; expired ones go first, then the oldest.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use amqp_core::idempotent::{Claim, IdempotencyStore, MemoryStore};
///
/// let store = MemoryStore::with_capacity(10);
/// let Claim::Acquired(token) = store.begin("m-1", Duration::from_secs(5)).await.unwrap() else {
///     panic!("a new key is acquired");
/// };
/// assert!(matches!(store.begin("m-1", Duration::from_secs(5)).await.unwrap(), Claim::Busy { .. }));
/// store.complete("m-1", &token, Duration::from_secs(60)).await.unwrap();
/// assert_eq!(store.begin("m-1", Duration::from_secs(5)).await.unwrap(), Claim::Done);
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    inner: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    by_key: HashMap<String, Record>,
    /// Keys in the order they were last written, with the write's sequence number (older writes
    /// of a key rewritten since are skipped when met).
    order: VecDeque<(u64, String)>,
    next_seq: u64,
}

#[derive(Debug)]
struct Record {
    seq: u64,
    expires: Instant,
    /// `Some(token)` while leased, `None` once done.
    lease: Option<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding up to 100,000 records.
    pub fn new() -> Self {
        Self::with_capacity(100_000)
    }

    /// A store holding up to `capacity` records (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// How many records it holds now (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.inner.lock().by_key.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Records {
    fn write(&mut self, key: &str, expires: Instant, lease: Option<String>) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.by_key.insert(
            key.to_owned(),
            Record {
                seq,
                expires,
                lease,
            },
        );
        self.order.push_back((seq, key.to_owned()));
    }

    /// Drops expired records from the front, then the oldest while over `capacity`.
    fn sweep(&mut self, now: Instant, capacity: usize) {
        while let Some((seq, key)) = self.order.front() {
            let current = self.by_key.get(key).map(|r| (r.seq, r.expires));
            match current {
                Some((s, expires)) if s == *seq => {
                    if expires > now && self.by_key.len() <= capacity {
                        break;
                    }
                    self.by_key.remove(key);
                }
                // Rewritten since, or removed: this entry is stale.
                _ => {}
            }
            self.order.pop_front();
        }
    }
}

impl IdempotencyStore for MemoryStore {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, BoxError>> {
        let now = Instant::now();
        let mut records = self.inner.lock();
        let claim = match records.by_key.get(key) {
            Some(r) if r.expires > now && r.lease.is_none() => Claim::Done,
            Some(r) if r.expires > now => Claim::Busy {
                remaining: r.expires - now,
            },
            _ => {
                let token = token();
                records.write(key, now + lease, Some(token.clone()));
                Claim::Acquired(token)
            }
        };
        records.sweep(now, self.capacity);
        Box::pin(std::future::ready(Ok(claim)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        _token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let now = Instant::now();
        let mut records = self.inner.lock();
        records.write(key, now + keep, None);
        records.sweep(now, self.capacity);
        Box::pin(std::future::ready(Ok(())))
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        let mut records = self.inner.lock();
        if records
            .by_key
            .get(key)
            .is_some_and(|r| r.lease.as_deref() == Some(token))
        {
            records.by_key.remove(key);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired(claim: Claim) -> String {
        match claim {
            Claim::Acquired(token) => token,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_acquired_again() {
        let store = MemoryStore::new();
        let first = acquired(store.begin("k", Duration::from_secs(1)).await.unwrap());
        assert!(matches!(
            store.begin("k", Duration::from_secs(1)).await.unwrap(),
            Claim::Busy { .. }
        ));
        tokio::time::advance(Duration::from_millis(1001)).await;
        let second = acquired(store.begin("k", Duration::from_secs(1)).await.unwrap());
        assert_ne!(first, second);
        // The first holder's release no longer drops the second's lease.
        store.release("k", &first).await.unwrap();
        assert!(matches!(
            store.begin("k", Duration::from_secs(1)).await.unwrap(),
            Claim::Busy { .. }
        ));
        store.release("k", &second).await.unwrap();
        acquired(store.begin("k", Duration::from_secs(1)).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn done_records_expire_and_the_store_stays_bounded() {
        let store = MemoryStore::with_capacity(3);
        for i in 0..10 {
            let key = format!("k{i}");
            let token = acquired(store.begin(&key, Duration::from_secs(1)).await.unwrap());
            store
                .complete(&key, &token, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(store.len() <= 3, "{} records", store.len());
        }
        assert_eq!(
            store.begin("k9", Duration::from_secs(1)).await.unwrap(),
            Claim::Done
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        acquired(store.begin("k9", Duration::from_secs(1)).await.unwrap());
    }
}
