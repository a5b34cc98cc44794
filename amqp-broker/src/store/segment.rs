//! One queue's log: its segment files in `queues/<id>/`, which one is being appended to, how
//! many live (unsettled) messages each holds, and when a segment may go.
//!
//! Segments are named by a zero-padded, increasing number (`00000000000000000001.seg`); a new
//! one is started when the current one reaches `segment_bytes` and at every start of the broker
//! (old segments are never appended to, so a cut tail never has new records behind it).
//!
//! Reclaiming: settled (`A`) and delivered (`D`) records go to the newest segment, so they may
//! refer to messages in older ones. A segment is therefore deleted only when all its messages
//! are settled *and* every older segment is gone: the records it holds then refer only to
//! messages that no longer exist. A queue whose consumers keep up uses about two segments of
//! disk. One message left unacked for long would pin the segments after it; compaction (see
//! `compact`) rewrites such an oldest segment with only its live messages, after which later
//! segments closed before the rewrite may go once nothing in them is live.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use super::compact::{self, Bits};
use super::format::SEGMENT_MAGIC;
use super::io::{AppendFile, Storage};

/// A segment file's name.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The number in a segment file's name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// What the store knows about one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    /// Its number (file name).
    pub id: u64,
    /// No message in it has a smaller seq, and none in a later segment has a smaller one either
    /// (messages are appended in seq order), so an ack finds its segment by binary search.
    pub first_seq: u64,
    /// Messages in it not yet settled.
    pub live: u64,
    /// Its size.
    pub bytes: u64,
    /// Messages written to it (live or not; after a compaction, those it kept).
    pub messages: u64,
    /// Which of its messages were settled, by `seq - first_seq` (for compaction).
    pub settled: Bits,
    /// Which of its messages were delivered, by `seq - first_seq` (compaction keeps their `D`).
    pub delivered: Bits,
    /// Set when it was compacted: segments numbered below this were closed before the rewrite
    /// (see `compact`).
    pub compacted_below: Option<u64>,
}

impl SegmentInfo {
    /// A segment with no message recorded yet.
    pub fn new(id: u64, first_seq: u64, bytes: u64) -> Self {
        Self {
            id,
            first_seq,
            live: 0,
            bytes,
            messages: 0,
            settled: Bits::default(),
            delivered: Bits::default(),
            compacted_below: None,
        }
    }
}

/// One queue's segments, owned by the writer thread.
#[derive(Debug)]
pub(crate) struct QueueLog {
    dir: PathBuf,
    /// Oldest first; when `active` is set, the last one is being appended to.
    segments: VecDeque<SegmentInfo>,
    active: Option<Box<dyn AppendFile>>,
    /// Encoded records not yet handed to the OS.
    pending: Vec<u8>,
    /// Appended to the OS since the last sync.
    unsynced: bool,
    /// One past the highest seq written (the next segment's `first_seq`).
    next_seq: u64,
    next_segment_id: u64,
}

impl QueueLog {
    /// A log that continues after what recovery found (segments oldest first).
    pub fn new(dir: PathBuf, segments: Vec<SegmentInfo>, next_seq: u64) -> Self {
        let next_segment_id = segments.last().map_or(1, |s| s.id + 1);
        Self {
            dir,
            segments: segments.into(),
            active: None,
            pending: Vec::new(),
            unsynced: false,
            next_seq,
            next_segment_id,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_active(&mut self, storage: &dyn Storage) -> io::Result<()> {
        if self.active.is_some() {
            return Ok(());
        }
        storage.create_dir_all(&self.dir)?;
        let id = self.next_segment_id;
        let file = storage.create(&self.dir.join(segment_name(id)))?;
        self.next_segment_id += 1;
        self.active = Some(file);
        let seg = SegmentInfo::new(id, self.next_seq, SEGMENT_MAGIC.len() as u64);
        self.segments.push_back(seg);
        self.pending.extend_from_slice(SEGMENT_MAGIC);
        Ok(())
    }

    fn push(&mut self, storage: &dyn Storage, record: &[u8], message: bool) -> io::Result<()> {
        self.ensure_active(storage)?;
        let seg = self.segments.back_mut().expect("an active segment exists");
        seg.bytes += record.len() as u64;
        if message {
            seg.live += 1;
            seg.messages += 1;
        }
        self.pending.extend_from_slice(record);
        Ok(())
    }

    /// Appends an `M` record.
    pub fn message(&mut self, storage: &dyn Storage, seq: u64, record: &[u8]) -> io::Result<()> {
        self.push(storage, record, true)?;
        self.next_seq = self.next_seq.max(seq + 1);
        Ok(())
    }

    /// The segment holding message `seq`, if it still exists.
    fn segment_of(&mut self, seq: u64) -> Option<&mut SegmentInfo> {
        let i = self.segments.partition_point(|s| s.first_seq <= seq);
        i.checked_sub(1).and_then(|i| self.segments.get_mut(i))
    }

    /// Appends an `A` record and counts the message out of its segment.
    pub fn settled(&mut self, storage: &dyn Storage, seq: u64, record: &[u8]) -> io::Result<()> {
        if let Some(seg) = self.segment_of(seq) {
            seg.live = seg.live.saturating_sub(1);
            seg.settled.set(seq - seg.first_seq);
        }
        self.push(storage, record, false)
    }

    /// Appends a `D` record.
    pub fn delivered(&mut self, storage: &dyn Storage, seq: u64, record: &[u8]) -> io::Result<()> {
        if let Some(seg) = self.segment_of(seq) {
            seg.delivered.set(seq - seg.first_seq);
        }
        self.push(storage, record, false)
    }

    /// Hands pending records to the OS (they survive the process, not yet the machine).
    pub fn write(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = self
            .active
            .as_mut()
            .expect("pending records have a segment");
        file.append(&self.pending)?;
        self.pending.clear();
        self.unsynced = true;
        Ok(())
    }

    /// Whether a sync would have anything to do.
    pub fn is_dirty(&self) -> bool {
        self.unsynced || !self.pending.is_empty()
    }

    /// Writes and syncs what is pending.
    pub fn sync(&mut self) -> io::Result<()> {
        self.write()?;
        if self.unsynced {
            if let Some(file) = self.active.as_mut() {
                file.sync()?;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// After a sync: starts a new segment once this one is full, and deletes the oldest segments
    /// while they hold no live message. Returns the segments deleted.
    pub fn reclaim(&mut self, storage: &dyn Storage, segment_bytes: u64) -> io::Result<usize> {
        let full = self
            .segments
            .back()
            .is_some_and(|s| s.bytes >= segment_bytes);
        if self.active.is_some() && full && !self.is_dirty() {
            self.active = None;
        }
        self.compact_front(storage)?;
        let mut deleted = 0;
        loop {
            let closed = self.segments.len() - usize::from(self.active.is_some());
            let Some(front) = self.segments.front() else {
                return Ok(deleted);
            };
            // The oldest goes once nothing in it is live; the one after a compacted oldest
            // goes once nothing in it is live if it was closed before the rewrite.
            let victim = if closed > 0 && front.live == 0 {
                0
            } else if closed > 1
                && self.segments[1].live == 0
                && front
                    .compacted_below
                    .is_some_and(|b| self.segments[1].id < b)
            {
                1
            } else {
                return Ok(deleted);
            };
            let id = self.segments[victim].id;
            storage.remove_file(&self.dir.join(segment_name(id)))?;
            self.segments.remove(victim);
            deleted += 1;
        }
    }

    /// Rewrites the oldest segment with only its live messages when that frees the next one
    /// (the trigger is documented in `compact`).
    fn compact_front(&mut self, storage: &dyn Storage) -> io::Result<()> {
        let closed = self.segments.len() - usize::from(self.active.is_some());
        if closed < 2 {
            return Ok(());
        }
        let (front, next) = (&self.segments[0], &self.segments[1]);
        let below = match &self.active {
            Some(_) => self.segments.back().map_or(self.next_segment_id, |s| s.id),
            None => self.next_segment_id,
        };
        // Once compacted, the segment holds live messages only and is rewritten again (to carry
        // newer delivered marks and drop newly settled ones) whenever that frees the next one.
        let mostly_dead = match front.compacted_below {
            None => front.live * 4 <= front.messages,
            Some(b) => next.id >= b,
        };
        let worth_it = front.live > 0 && next.live == 0 && mostly_dead;
        if !worth_it {
            return Ok(());
        }
        let path = self.dir.join(segment_name(front.id));
        let bytes = storage.read(&path)?;
        let out = compact::rewrite(&bytes, front.first_seq, &front.settled, &front.delivered);
        storage.replace(&path, &out)?;
        tracing::debug!(
            segment = %path.display(),
            before = bytes.len(),
            after = out.len(),
            live = front.live,
            "compacted the oldest segment"
        );
        let front = &mut self.segments[0];
        front.bytes = out.len() as u64;
        front.messages = front.live;
        front.compacted_below = Some(below);
        Ok(())
    }
}
