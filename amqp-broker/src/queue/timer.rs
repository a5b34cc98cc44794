//! One timer task per queue that needs one (message TTL, `x-expires`): it sleeps until the
//! queue's next deadline, or until the queue says the deadline moved. It never polls.

use std::sync::Weak;
use std::time::Instant;

use tokio::sync::Notify;

use super::Queue;

/// What the timer does next, as the queue decides it.
#[derive(Debug)]
pub(super) enum Next {
    /// Sleep until then (or until woken).
    At(Instant),
    /// Nothing pending: sleep until woken.
    Idle,
    /// The queue is gone.
    Stop,
}

/// Starts the task on the current tokio runtime (without one, as in unit tests, there is none).
pub(super) fn spawn(queue: Weak<Queue>, wake: std::sync::Arc<Notify>) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    rt.spawn(run(queue, wake));
    true
}

async fn run(queue: Weak<Queue>, wake: std::sync::Arc<Notify>) {
    loop {
        let next = match queue.upgrade() {
            Some(q) => q.on_timer(),
            None => return,
        };
        match next {
            Next::Stop => return,
            Next::Idle => wake.notified().await,
            Next::At(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => {}
                }
            }
        }
    }
}
