//! Start-up: read the definitions, then each durable queue's segments in order, and rebuild
//! what the queue held.
//!
//! Per segment: a missing or short magic means the file was created but never written (a crash
//! right after `create`): it is removed. Records are scanned (see [`format::scan`]); damage in
//! the middle is reported with the queue, segment and offset, and the damaged bytes skipped; a
//! damaged tail is cut (the file is truncated there), which is what a crash mid-write leaves.
//! A message is recovered unless a settled record names it; it is redelivered if a delivered
//! record names it. Queue directories that no durable queue owns (a delete that crashed half
//! way) are removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::Path;

use super::definitions::Definitions;
use super::format::{self, MessageRecord, SEGMENT_MAGIC, Scanned, tag};
use super::io::Storage;
use super::segment::{QueueLog, SegmentInfo, parse_segment_name, segment_name};
use super::{DELAYED_DIR, DELAYED_LOG};

/// What one durable queue held.
#[derive(Debug, Default)]
pub(crate) struct RecoveredQueue {
    /// Unsettled messages in queue order, with whether they were delivered before.
    pub messages: Vec<(MessageRecord, bool)>,
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
    let mut ids: Vec<u64> = storage
        .list(qdir)?
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .collect();
    ids.sort_unstable();
    let mut messages: BTreeMap<u64, (MessageRecord, usize)> = BTreeMap::new();
    let mut settled = BTreeSet::new();
    let mut delivered = BTreeSet::new();
    let mut timed: BTreeMap<u64, (u64, Box<[u8]>, usize)> = BTreeMap::new();
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
        let mut seg = SegmentInfo {
            id,
            first_seq: next_seq,
            live: 0,
            bytes: bytes.len() as u64,
        };
        let mut first = None;
        for found in format::scan(&bytes, SEGMENT_MAGIC.len()) {
            match found {
                Scanned::Record {
                    offset,
                    tag,
                    payload,
                } => {
                    let decoded = match tag {
                        tag::MESSAGE => format::message(payload).map(|m| {
                            let seq = m.seq;
                            first.get_or_insert(seq);
                            messages.insert(seq, (m, segments.len()));
                            seq
                        }),
                        tag::DELAYED => format::delayed_key(payload).map(|(due, seq)| {
                            first.get_or_insert(seq);
                            timed.insert(seq, (due, payload.into(), segments.len()));
                            seq
                        }),
                        tag::SETTLED => format::seq(payload).inspect(|&s| {
                            settled.insert(s);
                        }),
                        tag::DELIVERED => format::seq(payload).inspect(|&s| {
                            delivered.insert(s);
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
    let mut q = RecoveredQueue {
        messages: Vec::new(),
        next_seq,
        timed: Vec::new(),
    };
    for (seq, (due, payload, seg)) in timed {
        if !settled.contains(&seq) {
            segments[seg].live += 1;
            q.timed.push((due, seq, payload));
        }
    }
    for (seq, (m, seg)) in messages {
        if !settled.contains(&seq) {
            segments[seg].live += 1;
            q.messages.push((m, delivered.contains(&seq)));
        }
    }
    Ok((q, segments))
}
