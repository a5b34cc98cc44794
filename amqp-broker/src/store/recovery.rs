//! Start-up: read the definitions, then each durable queue's segments in order, and rebuild
//! what the queue held.
//!
//! Per segment: a missing or short magic means the file was created but never written (a crash
//! right after `create`): it is removed. Records are scanned (see [`format::scan`]); damage in
//! the middle is reported with the queue, segment and offset, and the damaged bytes skipped; a
//! damaged tail is cut (the file is truncated there), which is what a crash mid-write leaves.
//! A message is recovered unless a settled record names it; it is redelivered if a delivered
//! record names it. Queue directories that no durable queue owns (a delete that crashed half
//! way) are removed, and so are `.tmp` files a compaction left when it crashed before renaming.
//!
//! Only the index is kept ([`RecoveredMessage`]: seq, body size, priority, TTL, redelivered):
//! bodies stay on disk and the queue reads them back when consumers reach them (see
//! [`super::reader`]), so start-up memory and time grow with the number of messages, not with
//! their bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::Path;

use super::definitions::Definitions;
use super::format::{self, SEGMENT_MAGIC, Scanned, tag};
use super::io::Storage;
use super::segment::{QueueLog, SegmentInfo, parse_segment_name, segment_name};
use super::{DELAYED_DIR, DELAYED_LOG};

/// An unsettled message as recovery leaves it: its body stays in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecoveredMessage {
    /// Its position in the queue (and the key of its `M` record).
    pub seq: u64,
    /// Body size (`x-max-length-bytes` counts it).
    pub body_bytes: u32,
    /// Its `priority` property (which of a priority queue's lanes it waits in).
    pub priority: u8,
    /// Its `expiration` property as a duration, if it has a valid one.
    pub ttl: Option<std::time::Duration>,
    /// Whether a delivered record names it (it comes back with `redelivered = true`).
    pub redelivered: bool,
}

/// What one durable queue held.
#[derive(Debug, Default)]
pub(crate) struct RecoveredQueue {
    /// Unsettled messages in queue order.
    pub messages: Vec<RecoveredMessage>,
    /// Higher than every seq in the log (new messages must not reuse a seq an old record names).
    pub next_seq: u64,
    /// For the delayed-message log: unsettled messages as (due time in Unix ms, seq, `T`
    /// payload), kept encoded (see [`format::delayed_payload`]).
    pub timed: Vec<(u64, u64, Box<[u8]>)>,
}

/// Everything recovered from a data directory.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub definitions: Definitions,
    /// By queue id.
    pub queues: HashMap<u64, RecoveredQueue>,
    /// Persistent messages waiting in durable `x-delayed-message` exchanges (see [`DELAYED_LOG`]).
    pub delayed: RecoveredQueue,
    /// Damage found and skipped in the middle of segments: (queue, segment file, offset).
    pub corrupt: Vec<(String, String, usize)>,
}

/// Reads the definitions and every queue log; returns what was recovered, the logs for the
/// writer thread, and the next free queue id.
pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
) -> io::Result<(Recovered, HashMap<u64, QueueLog>, u64)> {
    let mut recovered = Recovered::default();
    match storage.read(&dir.join("definitions")) {
        Ok(bytes) => {
            recovered.definitions = Definitions::decode(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let queues_dir = dir.join("queues");
    let owned: HashMap<u64, &str> = recovered
        .definitions
        .queues
        .iter()
        .map(|q| (q.id, q.name.as_str()))
        .collect();
    let mut next_id = owned.keys().max().map_or(1, |m| m + 1);
    for name in storage.list(&queues_dir)? {
        let id = name.parse::<u64>().ok();
        if let Some(id) = id {
            next_id = next_id.max(id + 1);
        }
        if id.is_none_or(|id| !owned.contains_key(&id)) {
            tracing::info!("message store: removing {name}, which no durable queue owns");
            storage.remove_dir_all(&queues_dir.join(&name))?;
        }
    }
    let mut logs = HashMap::new();
    for (&id, &queue) in &owned {
        let qdir = queues_dir.join(id.to_string());
        let (q, segments) = recover_queue(storage, &qdir, queue, &mut recovered.corrupt)?;
        logs.insert(id, QueueLog::new(qdir, segments, q.next_seq));
        recovered.queues.insert(id, q);
    }
    let ddir = dir.join(DELAYED_DIR);
    let (q, segments) =
        recover_queue(storage, &ddir, "(delayed messages)", &mut recovered.corrupt)?;
    logs.insert(DELAYED_LOG, QueueLog::new(ddir, segments, q.next_seq));
    recovered.delayed = q;
    Ok((recovered, logs, next_id))
}

fn recover_queue(
    storage: &dyn Storage,
    qdir: &Path,
    queue: &str,
    corrupt: &mut Vec<(String, String, usize)>,
) -> io::Result<(RecoveredQueue, Vec<SegmentInfo>)> {
    let names = storage.list(qdir)?;
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        // A compaction that crashed before its rename: the segment itself is intact.
        storage.remove_file(&qdir.join(name))?;
    }
    let mut ids: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    ids.sort_unstable();
    let mut index = Index::default();
    // The delayed log's `T` records (by seq: due time, payload, segment) and the seqs its `A`
    // records settle; a queue log has neither.
    let mut timed: BTreeMap<u64, (u64, Box<[u8]>, usize)> = BTreeMap::new();
    let mut timed_settled = BTreeSet::new();
    let mut segments = Vec::new();
    let mut next_seq = 0u64;
    for id in ids {
        let name = segment_name(id);
        let path = qdir.join(&name);
        let bytes = storage.read(&path)?;
        if bytes.len() < SEGMENT_MAGIC.len() || !bytes.starts_with(SEGMENT_MAGIC) {
            if SEGMENT_MAGIC.starts_with(&bytes) {
                storage.remove_file(&path)?; // Created, never written: a crash right after.
            } else {
                tracing::error!(queue, segment = %name, "not a segment file (bad magic); ignored");
                corrupt.push((queue.to_owned(), name, 0));
            }
            continue;
        }
        let mut seg = SegmentInfo::new(id, next_seq, bytes.len() as u64);
        let mut first = None;
        for found in format::scan(&bytes, SEGMENT_MAGIC.len()) {
            match found {
                Scanned::Record {
                    offset,
                    tag,
                    payload,
                } => {
                    let decoded = match tag {
                        tag::MESSAGE => format::message_header(payload).map(|m| {
                            let seq = m.seq;
                            first.get_or_insert(seq);
                            index.message(index_entry(&m), segments.len());
                            seq
                        }),
                        tag::DELAYED => format::delayed_key(payload).map(|(due, seq)| {
                            first.get_or_insert(seq);
                            timed.insert(seq, (due, payload.into(), segments.len()));
                            seq
                        }),
                        tag::SETTLED => format::seq(payload).inspect(|&s| match index.get(s) {
                            Some(e) => e.settled = true,
                            None => {
                                timed_settled.insert(s);
                            }
                        }),
                        tag::DELIVERED => format::seq(payload).inspect(|&s| {
                            if let Some(e) = index.get(s) {
                                e.message.redelivered = true;
                            }
                        }),
                        _ => Err(format::Malformed("record type in a segment")),
                    };
                    match decoded {
                        Ok(seq) => next_seq = next_seq.max(seq + 1),
                        Err(format::Malformed(what)) => {
                            tracing::error!(queue, segment = %name, offset, "malformed {what}; record skipped");
                            corrupt.push((queue.to_owned(), name.clone(), offset));
                        }
                    }
                }
                Scanned::Corrupt { offset, resume } => {
                    tracing::error!(
                        queue,
                        segment = %name,
                        offset,
                        "checksum mismatch: {} damaged bytes skipped (a record there is lost)",
                        resume - offset
                    );
                    corrupt.push((queue.to_owned(), name.clone(), offset));
                }
                Scanned::Tail { offset } => {
                    tracing::warn!(
                        queue,
                        segment = %name,
                        offset,
                        "incomplete or damaged tail ({} bytes) cut: the crash case",
                        bytes.len() - offset
                    );
                    storage.truncate(&path, offset as u64)?;
                    seg.bytes = offset as u64;
                }
            }
        }
        if let Some(first) = first {
            seg.first_seq = first;
        }
        segments.push(seg);
    }
    let live = index.entries.iter().filter(|e| !e.settled).count();
    let mut q = RecoveredQueue {
        messages: Vec::with_capacity(live),
        next_seq,
        timed: Vec::new(),
    };
    for (seq, (due, payload, seg)) in timed {
        let seg = &mut segments[seg];
        let bit = seq.checked_sub(seg.first_seq);
        seg.messages += 1;
        if timed_settled.contains(&seq) {
            if let Some(bit) = bit {
                seg.settled.set(bit);
            }
        } else {
            seg.live += 1;
            q.timed.push((due, seq, payload));
        }
    }
    for e in index.entries {
        let seg = &mut segments[e.segment as usize];
        let bit = e.message.seq.checked_sub(seg.first_seq);
        seg.messages += 1;
        if let Some(bit) = bit.filter(|_| e.message.redelivered) {
            seg.delivered.set(bit);
        }
        if e.settled {
            if let Some(bit) = bit {
                seg.settled.set(bit);
            }
        } else {
            seg.live += 1;
            q.messages.push(e.message);
        }
    }
    Ok((q, segments))
}

/// The messages of one log in seq order, as its records are read, oldest segment first.
///
/// A log's messages are appended in seq order and a settled or delivered record always comes
/// after its message's record (the queue sends it later, under the same lock), so a vector
/// searched by seq is enough: no set of every settled seq is kept, which keeps recovery's
/// memory at one entry per message found.
#[derive(Debug, Default)]
struct Index {
    entries: Vec<Indexed>,
}

#[derive(Debug)]
struct Indexed {
    message: RecoveredMessage,
    /// Index of its segment among those recovered.
    segment: u32,
    /// A settled record names it.
    settled: bool,
}

impl Index {
    fn message(&mut self, message: RecoveredMessage, segment: usize) {
        let entry = Indexed {
            message,
            segment: u32::try_from(segment).expect("fewer than 2^32 segments"),
            settled: false,
        };
        let seq = entry.message.seq;
        match self.entries.last() {
            Some(last) if last.message.seq >= seq => {
                // Out of order (a log put together by hand): keep it sorted; a repeat replaces.
                match self.entries.binary_search_by_key(&seq, |e| e.message.seq) {
                    Ok(i) => self.entries[i] = entry,
                    Err(i) => self.entries.insert(i, entry),
                }
            }
            _ => self.entries.push(entry),
        }
    }

    fn get(&mut self, seq: u64) -> Option<&mut Indexed> {
        let i = self
            .entries
            .binary_search_by_key(&seq, |e| e.message.seq)
            .ok()?;
        Some(&mut self.entries[i])
    }
}

/// What the queue's index needs of a message record.
fn index_entry(m: &format::MessageHeader) -> RecoveredMessage {
    let ttl = crate::message::ttl_of(&m.properties);
    RecoveredMessage {
        seq: m.seq,
        body_bytes: u32::try_from(m.body_bytes).unwrap_or(u32::MAX),
        priority: m.properties.priority().unwrap_or(0),
        ttl,
        redelivered: false,
    }
}
