//! The on-disk store: durable definitions and persistent messages, recovered at start.
//!
//! # Layout of a data directory
//!
//! ```text
//! <data dir>/
//!   definitions                 durable exchanges, queues, bindings (see `definitions`)
//!   queues/<queue id>/          one log per durable queue
//!     00000000000000000001.seg  segments, oldest first (see `segment`)
//!     00000000000000000002.seg
//!   delayed/                    the log of persistent delayed messages (same segments)
//!   lock                        held by the running broker (see `lock`); holds its pid
//! ```
//!
//! Record framing and every record's bytes are documented in [`format`](mod@format); recovery rules in
//! [`recovery`]; group commit and failure handling in [`writer`].
//!
//! # What is stored
//!
//! A message is stored when it is persistent (`delivery_mode = 2`) and its queue durable (and not
//! exclusive). The queue writes an `M` record when it accepts the message, `D` when it first
//! goes to a consumer (so it comes back with `redelivered = true`), and `A` when it leaves for
//! good. Records go through a channel to one writer thread, in the order the queue made them
//! (they are sent under the queue's lock). A publisher confirm (or `tx.commit-ok`) for such a
//! message waits for [`Store::after_sync`]; everything else is answered at once.
//!
//! A persistent message published to a durable `x-delayed-message` exchange is stored too, as a
//! `T` record in the `delayed/` log (its confirm waits for the sync as well), and settled with
//! `A` once it was routed when due. The writer syncs the queue logs before it writes the delayed
//! log, so that `A` never reaches the disk before the queue records of the routing it settles.
//! # Bodies on disk only
//!
//! The `M` record is also where a paged-out message's body lives: a durable queue over its
//! memory budget ([`StoreOptions::queue_memory_budget_bytes`]) keeps only an index entry for
//! further persistent messages and reads their records back when consumers reach them
//! ([`reader`]). Recovery likewise loads only the index (seq, size, priority, TTL, redelivered)
//! and leaves every body on disk until it is wanted.
//!
//! # Monotonic by design
//!
//! Files are only appended to (and cut at a damaged tail on recovery), segments only deleted
//! whole, the definitions file only replaced atomically; queue ids and segment numbers only
//! grow. Later features (compaction, an index file) can be added next to this without changing
//! what is already on disk.

pub(crate) mod compact;
pub(crate) mod definitions;
#[cfg(test)]
mod delayed_tests;
pub(crate) mod format;
pub(crate) mod io;
pub(crate) mod lock;
mod reader;
mod recovery;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

pub(crate) use self::definitions::Definitions;
use self::io::Storage;
pub(crate) use self::reader::LogCursor;
pub(crate) use self::recovery::{Recovered, RecoveredMessage, RecoveredQueue};
pub(crate) use self::writer::Waiter;
use self::writer::{Request, Writer};
use crate::message::Message;
use crate::metrics::Histogram;

/// The writer's id for the delayed-message log (queue ids start at 1).
pub(crate) const DELAYED_LOG: u64 = 0;
/// The delayed-message log's directory in the data directory.
pub(crate) const DELAYED_DIR: &str = "delayed";

/// Settings of the store.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoreOptions {
    /// A segment is closed (and a new one started) once it reaches this size.
    pub segment_bytes: u64,
    /// How much memory each durable queue may use for the messages it holds; persistent
    /// messages beyond it are kept on disk only and read back when consumers reach them.
    pub queue_memory_budget_bytes: u64,
}

/// The store as the broker sees it: a handle to the writer thread plus the definitions file.
#[derive(Debug)]
pub(crate) struct Store {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    requests: mpsc::Sender<Request>,
    /// The first write or fsync failure; once set, nothing more is written.
    failure: Arc<OnceLock<Arc<str>>>,
    /// The definitions file as last written (rewritten only when this changes).
    definitions: Mutex<Vec<u8>>,
    next_queue_id: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The data directory's lock (see [`lock`]), released by [`Store::close`].
    dir_lock: Mutex<Option<lock::DirLock>>,
    /// See [`StoreOptions::queue_memory_budget_bytes`].
    queue_memory_budget_bytes: u64,
    /// How long the writer's group commits take (recorded by the writer thread).
    sync_latency: Arc<Histogram>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, recovers it, and starts the writer thread.
    /// Blocking: call it from a blocking context.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: StoreOptions,
    ) -> std::io::Result<(Arc<Store>, Recovered)> {
        storage.create_dir_all(&dir.join("queues"))?;
        let started = std::time::Instant::now();
        let (recovered, logs, next_queue_id) = recovery::recover(&*storage, dir)?;
        let messages: usize = recovered.queues.values().map(|q| q.messages.len()).sum();
        tracing::info!(
            dir = %dir.display(),
            queues = recovered.definitions.queues.len(),
            exchanges = recovered.definitions.exchanges.len(),
            messages,
            millis = started.elapsed().as_millis() as u64,
            "message store recovered"
        );
        let failure = Arc::new(OnceLock::new());
        let sync_latency = Arc::new(Histogram::default());
        let writer = Writer::new(
            storage.clone(),
            dir.join("queues"),
            logs,
            options.segment_bytes,
            failure.clone(),
            sync_latency.clone(),
        );
        let (requests, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("amqp-store-writer".into())
            .spawn(move || writer.run(rx))?;
        let store = Store {
            storage,
            dir: dir.to_owned(),
            requests,
            failure,
            definitions: Mutex::new(recovered.definitions.encode()),
            next_queue_id: AtomicU64::new(next_queue_id),
            writer: Mutex::new(Some(thread)),
            dir_lock: Mutex::new(None),
            queue_memory_budget_bytes: options.queue_memory_budget_bytes,
            sync_latency,
        };
        Ok((Arc::new(store), recovered))
    }

    /// Keeps the data directory's lock until [`Store::close`].
    pub fn hold_lock(&self, lock: lock::DirLock) {
        *self.dir_lock.lock() = Some(lock);
    }

    /// Why the store refuses writes, if it does.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.failure.get().cloned()
    }

    /// How much memory each durable queue may use for the messages it holds.
    pub fn queue_memory_budget_bytes(&self) -> u64 {
        self.queue_memory_budget_bytes
    }

    /// How long group commits take: from the first write of a round to its last fsync, one
    /// observation per round that had anything to sync.
    pub fn sync_latency(&self) -> &Histogram {
        &self.sync_latency
    }

    /// A fresh id for a durable queue's log.
    pub fn new_queue_id(&self) -> u64 {
        self.next_queue_id.fetch_add(1, Ordering::Relaxed)
    }

    fn send(&self, request: Request) {
        if let Err(mpsc::SendError(Request::AfterSync(w))) = self.requests.send(request) {
            w(Err("the message store is closed".into()));
        }
    }

    /// Appends a message to a queue's log.
    pub fn message(&self, queue: u64, seq: u64, msg: &Message) {
        let mut record = Vec::with_capacity(msg.body.len() + 64);
        format::put_message(
            &mut record,
            seq,
            msg.exchange.as_str(),
            msg.routing_key.as_str(),
            &msg.properties,
            &msg.body,
        );
        self.send(Request::Message { queue, seq, record });
    }

    /// Records that a message left its queue for good.
    pub fn settled(&self, queue: u64, seq: u64) {
        let mut record = Vec::with_capacity(17);
        format::put_seq(&mut record, format::tag::SETTLED, seq);
        self.send(Request::Settled { queue, seq, record });
    }

    /// Appends a delayed message (a `T` payload, see [`format::delayed_payload`]) to the
    /// delayed log.
    pub fn delayed_message(&self, seq: u64, payload: &[u8]) {
        let mut record = Vec::with_capacity(payload.len() + format::FRAME_OVERHEAD_BYTES);
        format::frame(&mut record, format::tag::DELAYED, |b| {
            b.extend_from_slice(payload)
        });
        self.send(Request::Message {
            queue: DELAYED_LOG,
            seq,
            record,
        });
    }

    /// Records that a message went to a consumer.
    pub fn delivered(&self, queue: u64, seq: u64) {
        let mut record = Vec::with_capacity(17);
        format::put_seq(&mut record, format::tag::DELIVERED, seq);
        self.send(Request::Delivered { queue, seq, record });
    }

    /// Runs `waiter` once everything sent before is synced (or can never be).
    pub fn after_sync(&self, waiter: Waiter) {
        self.send(Request::AfterSync(waiter));
    }

    /// Removes a deleted queue's log.
    pub fn drop_queue(&self, queue: u64) {
        self.send(Request::DropQueue(queue));
    }

    /// Writes the definitions file if it changed. Blocking (one small file, rarely).
    pub fn write_definitions(&self, defs: &Definitions) -> Result<(), Arc<str>> {
        let bytes = defs.encode();
        let mut last = self.definitions.lock();
        if *last == bytes {
            return Ok(());
        }
        if let Some(reason) = self.failure() {
            return Err(reason);
        }
        let path = self.dir.join("definitions");
        if let Err(e) = self.storage.replace(&path, &bytes) {
            let reason: Arc<str> = format!("cannot write {}: {e}", path.display()).into();
            if self.failure.set(reason.clone()).is_ok() {
                tracing::error!("message store: {reason}; refusing further writes");
            }
            return Err(reason);
        }
        *last = bytes;
        Ok(())
    }

    /// Syncs everything and stops the writer thread. Blocking; later writes are refused.
    pub fn close(&self) {
        let Some(thread) = self.writer.lock().take() else {
            return;
        };
        let (done, wait) = mpsc::channel();
        self.send(Request::Close(done));
        let _ = wait.recv();
        let _ = thread.join();
        // Everything is synced and nothing more is written: another broker may have the directory.
        self.dir_lock.lock().take();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// A durable queue's link to the store.
#[derive(Debug, Clone)]
pub(crate) struct QueueStore {
    /// The queue's log id (its directory name).
    pub id: u64,
    pub store: Arc<Store>,
}
