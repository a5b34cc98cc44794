//! Delayed messages for `x-delayed-message` exchanges: held in one ordered map per vhost and
//! released by one timer task, which sleeps until the earliest is due (no task per message and
//! no scan per tick, so a million waiting messages cost a map entry each).
//!
//! A waiting message is held encoded, as the `T` payload the store writes (see
//! [`format::delayed_payload`]): its body and a few dozen bytes, where the decoded message with
//! its property table would take about a kilobyte. It is decoded when due.
//!
//! Due times are wall-clock milliseconds since the Unix epoch, because persistent delayed
//! messages (on a durable exchange, with a store) are kept in the store's delayed log and must
//! come due at the same moment after a restart; messages already overdue then go at once, in
//! due-time order. Transient ones are held in memory only and are gone after a restart, as in
//! the RabbitMQ plugin.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::message::Message;
use crate::store::Store;
use crate::store::format;
use crate::vhost::Vhost;

/// The longest the timer sleeps in one go: it looks again at least this often, so that a
/// wall-clock jump delays nothing by more than this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A message waiting for its delay.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The message, its delayed exchange (it routes from there when due) and its routing keys
    /// (its own, `CC`, `BCC`), as a `T` payload.
    pub payload: Box<[u8]>,
    /// Whether it has a record in the store's delayed log (settled once it is routed).
    pub stored: bool,
}

/// The vhost's delayed messages.
#[derive(Debug, Default)]
pub(crate) struct Delayed {
    state: Mutex<State>,
    /// Wakes the timer when an earlier message arrives.
    wake: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    /// By due time (Unix ms), then by seq (equal due times keep publish order).
    pending: BTreeMap<(u64, u64), Pending>,
    /// The next message's seq: its key here and its record's seq in the store's delayed log
    /// (which must grow in log order, so it is taken and logged under this lock).
    next_seq: u64,
    started: bool,
    /// The due time the timer sleeps until (`None`: until woken).
    timer_at: Option<u64>,
}

/// The delay an `x-delay` header asks for (a positive integer of milliseconds; anything else
/// means none, as in the plugin).
pub(crate) fn delay_of(headers: Option<&FieldTable>) -> Option<Duration> {
    let v = headers?.inner().get("x-delay")?;
    let ms = crate::queue::integer(v).or(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    })?;
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Delayed {
    /// Holds `msg` (routed by `keys`) until `delay` has passed; then the vhost routes it. With
    /// `store`, the message is logged first (its confirm then waits for [`Store::after_sync`]).
    /// Returns the bytes now held, for the memory monitor.
    pub fn schedule(
        &self,
        vhost: Weak<Vhost>,
        delay: Duration,
        keys: &[String],
        msg: &Message,
        store: Option<&Store>,
    ) -> usize {
        let due = unix_ms_now().saturating_add(delay.as_millis() as u64);
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let payload = format::delayed_payload(due, keys, seq, msg);
        if let Some(store) = store {
            store.delayed_message(seq, &payload);
        }
        let pending = Pending {
            payload: payload.into_boxed_slice(),
            stored: store.is_some(),
        };
        let held = pending.payload.len();
        self.insert_locked(&mut st, vhost, due, seq, pending);
        held
    }

    /// Puts back a message recovered from the store's delayed log (overdue ones go at once).
    pub fn restore(&self, vhost: Weak<Vhost>, due_unix_ms: u64, seq: u64, payload: Box<[u8]>) {
        let pending = Pending {
            payload,
            stored: true,
        };
        let mut st = self.state.lock();
        st.next_seq = st.next_seq.max(seq + 1);
        self.insert_locked(&mut st, vhost, due_unix_ms, seq, pending);
    }

    /// Makes new seqs start at `next_seq` (above every seq the store's delayed log names).
    pub fn continue_after(&self, next_seq: u64) {
        let mut st = self.state.lock();
        st.next_seq = st.next_seq.max(next_seq);
    }

    fn insert_locked(
        &self,
        st: &mut State,
        vhost: Weak<Vhost>,
        due: u64,
        seq: u64,
        pending: Pending,
    ) {
        st.pending.insert((due, seq), pending);
        if st.timer_at.is_some_and(|t| t <= due) {
            return;
        }
        if st.started {
            self.wake.notify_one();
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            st.started = true;
            rt.spawn(run(vhost, self.wake.clone()));
        }
    }

    /// Messages due by `now` (Unix ms) with their seqs, and when the next one is.
    fn take_due(&self, now: u64) -> (Vec<(u64, Pending)>, Option<u64>) {
        let mut st = self.state.lock();
        let mut due = Vec::new();
        while let Some(entry) = st.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let seq = entry.key().1;
            due.push((seq, entry.remove()));
        }
        st.timer_at = st.pending.first_key_value().map(|(k, _)| k.0);
        (due, st.timer_at)
    }

    /// How many messages wait.
    #[allow(dead_code)]
    pub fn len(&self) -> usize {
        self.state.lock().pending.len()
    }
}

async fn run(vhost: Weak<Vhost>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(v) = vhost.upgrade() else { return };
            let (due, next) = v.delayed.take_due(unix_ms_now());
            for (seq, p) in due {
                v.route_delayed(seq, p);
            }
            next
        };
        match next {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(unix_ms_now())).min(MAX_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
