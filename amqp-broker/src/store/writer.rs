//! The writer thread: the only code that writes queue logs. It takes requests in order, appends
//! them, and syncs in groups: one fsync per dirty file covers every confirm waiting at that
//! moment, so durability costs latency, not throughput.
//!
//! A round: block for the first request, drain whatever else is queued (at most
//! [`MAX_BATCH`]), append it all, then — if anyone waits for durability — fsync each dirty file
//! once and answer every waiter. Requests that arrive during the fsync form the next round.
//! Without waiters records are still handed to the OS every round (so they survive the process
//! being killed) and synced within [`SYNC_INTERVAL`].
//!
//! After a failed write or fsync the thread refuses everything: the file's state is unknown
//! (Linux may drop the dirty pages and report the error once), so no confirm could be honest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::DELAYED_LOG;
use super::io::Storage;
use super::segment::QueueLog;
use crate::metrics::Histogram;

/// Most requests taken into one round.
const MAX_BATCH: usize = 65_536;
/// How long records without a waiter may stay unsynced.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Called once the records requested before it are durable (`Ok`), or will never be (`Err`,
/// with the reason).
pub(crate) type Waiter = Box<dyn FnOnce(Result<(), Arc<str>>) + Send>;

/// Work for the writer thread.
pub(crate) enum Request {
    /// An encoded `M` record for a queue.
    Message {
        queue: u64,
        seq: u64,
        record: Vec<u8>,
    },
    /// An encoded `A` record.
    Settled {
        queue: u64,
        seq: u64,
        record: Vec<u8>,
    },
    /// An encoded `D` record.
    Delivered {
        queue: u64,
        seq: u64,
        record: Vec<u8>,
    },
    /// Answer once everything before it is synced.
    AfterSync(Waiter),
    /// Hand every record sent before to the OS (not a sync), then answer: a queue reading
    /// back a paged-out message that is not in its file yet waits for this.
    Flush(std::sync::mpsc::Sender<()>),
    /// The queue was deleted: remove its directory.
    DropQueue(u64),
    /// Sync everything, then stop and say so.
    Close(std::sync::mpsc::Sender<()>),
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub storage: Arc<dyn Storage>,
    /// `<data dir>/queues`.
    pub queues_dir: PathBuf,
    pub queues: HashMap<u64, QueueLog>,
    pub segment_bytes: u64,
    /// Set once, on the first failure; read by publishers to refuse persistent messages.
    pub failure: Arc<OnceLock<Arc<str>>>,
    /// How long each group commit takes (see [`Writer::commit`]).
    sync_latency: Arc<Histogram>,
    waiters: Vec<Waiter>,
}

impl Writer {
    pub fn new(
        storage: Arc<dyn Storage>,
        queues_dir: PathBuf,
        queues: HashMap<u64, QueueLog>,
        segment_bytes: u64,
        failure: Arc<OnceLock<Arc<str>>>,
        sync_latency: Arc<Histogram>,
    ) -> Self {
        Self {
            storage,
            queues_dir,
            queues,
            segment_bytes,
            failure,
            sync_latency,
            waiters: Vec::new(),
        }
    }

    /// Serves requests until `Close` or until every sender is gone.
    pub fn run(mut self, requests: Receiver<Request>) {
        self.reclaim();
        loop {
            let dirty = self.queues.values().any(QueueLog::is_dirty);
            let first = if dirty {
                match requests.recv_timeout(SYNC_INTERVAL) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match requests.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            let mut close = None;
            let mut must_sync = first.is_none();
            let mut next = first;
            let mut taken = 0;
            while let Some(request) = next.take() {
                taken += 1;
                match request {
                    Request::Close(done) => {
                        close = Some(done);
                        must_sync = true;
                        break;
                    }
                    other => self.apply(other),
                }
                if taken < MAX_BATCH {
                    next = requests.try_recv().ok();
                }
            }
            if must_sync || !self.waiters.is_empty() {
                self.commit();
            } else {
                self.write_all();
            }
            if let Some(done) = close {
                let _ = done.send(());
                return;
            }
        }
        self.commit();
    }

    fn failed(&self) -> Option<Arc<str>> {
        self.failure.get().cloned()
    }

    fn fail(&mut self, what: String) {
        let reason: Arc<str> = what.into();
        if self.failure.set(reason.clone()).is_ok() {
            tracing::error!(
                "message store: {reason}; refusing further writes (persistent messages to durable \
                 queues are now refused; restart the broker once the disk is healthy)"
            );
        }
        let failure = self.failed().unwrap_or(reason);
        for w in self.waiters.drain(..) {
            w(Err(failure.clone()));
        }
    }

    fn apply(&mut self, request: Request) {
        if let Request::AfterSync(w) = request {
            match self.failed() {
                Some(reason) => w(Err(reason)),
                None => self.waiters.push(w),
            }
            return;
        }
        if let Request::Flush(done) = request {
            self.write_all();
            let _ = done.send(());
            return;
        }
        if self.failed().is_some() {
            return;
        }
        let storage = self.storage.clone();
        let result = match request {
            Request::Message { queue, seq, record } => {
                let dir = self.queues_dir.join(queue.to_string());
                let log = self
                    .queues
                    .entry(queue)
                    .or_insert_with(|| QueueLog::new(dir, Vec::new(), 0));
                log.message(&*storage, seq, &record).map_err(|e| (queue, e))
            }
            // Records for a queue that has no log (deleted, or never held a message) are moot.
            Request::Settled { queue, seq, record } => match self.queues.get_mut(&queue) {
                Some(log) => log.settled(&*storage, seq, &record).map_err(|e| (queue, e)),
                None => Ok(()),
            },
            Request::Delivered { queue, seq, record } => match self.queues.get_mut(&queue) {
                Some(log) => log
                    .delivered(&*storage, seq, &record)
                    .map_err(|e| (queue, e)),
                None => Ok(()),
            },
            Request::DropQueue(queue) => {
                self.queues.remove(&queue);
                let dir = self.queues_dir.join(queue.to_string());
                if let Err(e) = storage.remove_dir_all(&dir) {
                    tracing::warn!("message store: cannot remove {}: {e}", dir.display());
                }
                Ok(())
            }
            Request::AfterSync(_) | Request::Flush(_) | Request::Close(_) => {
                unreachable!("handled above")
            }
        };
        if let Err((queue, e)) = result {
            self.fail(format!("cannot append to the log of queue #{queue}: {e}"));
        }
    }

    /// Hands every pending record to the OS, except the delayed log's: its `A` records may
    /// settle messages whose queue records are not synced yet, so it is written only by
    /// [`Writer::commit`], after the queue logs are synced.
    fn write_all(&mut self) {
        if self.failed().is_some() {
            return;
        }
        let mut error = None;
        for (id, log) in self.queues.iter_mut().filter(|(id, _)| **id != DELAYED_LOG) {
            if let Err(e) = log.write() {
                error = Some(format!(
                    "write to {} (queue #{id}) failed: {e}",
                    log.dir().display()
                ));
                break;
            }
        }
        if let Some(what) = error {
            self.fail(what);
        }
    }

    /// Syncs every dirty log (the delayed log last, see [`Writer::write_all`]), answers the
    /// waiters, then reclaims. A round that had something to sync records how long it took.
    fn commit(&mut self) {
        if self.failed().is_none() {
            let dirty = self.queues.values().any(QueueLog::is_dirty);
            let started = Instant::now();
            let mut error = None;
            let mut logs: Vec<_> = self.queues.iter_mut().collect();
            logs.sort_by_key(|(id, _)| **id == DELAYED_LOG);
            for (id, log) in logs {
                if let Err(e) = log.sync() {
                    error = Some(format!(
                        "fsync of {} (queue #{id}) failed: {e}",
                        log.dir().display()
                    ));
                    break;
                }
            }
            match error {
                Some(what) => self.fail(what),
                None if dirty => self.sync_latency.observe(started.elapsed()),
                None => {}
            }
        }
        let result = match self.failed() {
            Some(reason) => Err(reason),
            None => Ok(()),
        };
        for w in self.waiters.drain(..) {
            w(result.clone());
        }
        if result.is_ok() {
            self.reclaim();
        }
    }

    fn reclaim(&mut self) {
        for (id, log) in &mut self.queues {
            if let Err(e) = log.reclaim(&*self.storage, self.segment_bytes) {
                tracing::warn!(
                    "message store: cannot delete a settled segment of queue #{id}: {e}"
                );
            }
        }
    }
}
