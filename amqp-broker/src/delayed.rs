//! Delayed messages for `x-delayed-message` exchanges: held in one ordered map per vhost and
//! released by one timer task, which sleeps until the earliest is due (no task per message, so
//! a million waiting messages cost a map entry each).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::message::Message;
use crate::vhost::Vhost;

/// A message waiting for its delay.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The delayed exchange it was published to (it routes from there when due).
    pub exchange: ShortString,
    /// Its routing keys (its own, `CC`, `BCC`).
    pub keys: Vec<String>,
    pub msg: Arc<Message>,
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
    /// By due time, then arrival (equal delays keep publish order).
    pending: BTreeMap<(Instant, u64), Pending>,
    next_id: u64,
    started: bool,
    /// What the timer sleeps until (`None`: until woken).
    timer_at: Option<Instant>,
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

impl Delayed {
    /// Holds `pending` until `delay` has passed; then the vhost routes it.
    pub fn schedule(&self, vhost: Weak<Vhost>, delay: Duration, pending: Pending) {
        let at = Instant::now() + delay;
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.pending.insert((at, id), pending);
        if st.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        if st.started {
            self.wake.notify_one();
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            st.started = true;
            rt.spawn(run(vhost, self.wake.clone()));
        }
    }

    /// Messages due by `now`, and when the next one is.
    fn take_due(&self, now: Instant) -> (Vec<Pending>, Option<Instant>) {
        let mut st = self.state.lock();
        let mut due = Vec::new();
        while let Some(entry) = st.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
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
            let (due, next) = v.delayed.take_due(Instant::now());
            for p in due {
                v.route_delayed(p);
            }
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
