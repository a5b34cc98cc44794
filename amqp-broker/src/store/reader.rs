//! Reading paged-out messages back from a queue's log.
//!
//! A durable queue whose messages go over its memory budget keeps only a small index entry for
//! each further persistent message (see `queue::paged`); the body stays in the `M` record the
//! queue wrote when it accepted the message. One queue's records are appended in seq order, so
//! the messages it reads back (a rising run of seqs) lie in file order too: a [`LogCursor`] that
//! only moves forward finds them all, stepping over settled, delivered and resident messages'
//! records on the way. Each read covers many messages ([`READ_CHUNK_BYTES`] at a time, as many
//! messages as the caller asks for), so consumers do not wait for a disk read per message.
//!
//! A message is paged out as soon as its record is sent to the writer thread, possibly before
//! the record reaches the file; a reader that runs out of file asks the writer to flush
//! ([`Store::flush`]) once and looks again. A reader that misses a message (a later one comes
//! first, bytes do not frame, or the log ends) rescans from the oldest segment once before it
//! gives the message up: compaction (see `compact`) may have rewritten the file under its cursor.

use std::io;
use std::path::Path;

use super::Store;
use super::format::{self, FRAME_OVERHEAD_BYTES, Framed, MessageRecord, SEGMENT_MAGIC, tag};
use super::segment::{parse_segment_name, segment_name};

/// Bytes asked of the file system per read.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// A position in one queue's log that is never after the next record the queue will read back.
/// The default is before the oldest segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogCursor {
    /// The segment (file number) being read; one that no longer exists means "the next one".
    segment: u64,
    /// Offset in it; 0 is before the magic.
    offset: u64,
}

/// How one pass over a chunk of a segment ended.
enum Pass {
    /// Everything wanted was found.
    Done,
    /// More of this segment is to be read from the cursor, `len` bytes at least.
    More { len: usize },
    /// The cursor is at the end of what the segment file holds now.
    EndOfFile,
    /// The next wanted message was not where it should be (the cursor stays before the record
    /// that showed it).
    Missed,
}

impl Store {
    /// Reads back the messages `wanted` (rising seqs) of queue `queue` from its log, starting at
    /// `cursor` and leaving it after the last one found. A seq whose record cannot be found or
    /// decoded is reported (error log, with the segment) and left out: callers match the result
    /// to `wanted` by seq.
    pub fn read_back(
        &self,
        queue: u64,
        cursor: &mut LogCursor,
        wanted: &[u64],
    ) -> Vec<MessageRecord> {
        let dir = self.dir.join("queues").join(queue.to_string());
        let mut reading = Reading {
            queue,
            wanted,
            next: 0,
            found: Vec::with_capacity(wanted.len()),
            may_rescan: true,
        };
        let mut flushed = false;
        let mut len = READ_CHUNK_BYTES;
        while reading.next < wanted.len() {
            let path = dir.join(segment_name(cursor.segment));
            let bytes = match self.storage.read_at(&path, cursor.offset, len) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    tracing::error!(queue, path = %path.display(), "cannot read back paged-out messages: {e}");
                    break;
                }
            };
            let whole = bytes.len() == len;
            len = READ_CHUNK_BYTES;
            match reading.pass(cursor, &bytes, whole) {
                Pass::Done => break,
                Pass::More { len: at_least } => len = at_least.max(READ_CHUNK_BYTES),
                Pass::EndOfFile => match self.later_segment(&dir, cursor.segment) {
                    Some(id) => {
                        *cursor = LogCursor {
                            segment: id,
                            offset: 0,
                        }
                    }
                    None if !flushed => {
                        self.flush();
                        flushed = true;
                    }
                    None if reading.may_rescan => {
                        reading.may_rescan = false;
                        *cursor = LogCursor::default();
                    }
                    None => break,
                },
                Pass::Missed => {
                    reading.may_rescan = false;
                    *cursor = LogCursor::default();
                }
            }
        }
        while reading.next < wanted.len() {
            reading.missing(cursor.segment);
        }
        reading.found
    }

    /// Hands every record sent so far to the OS (no sync), and waits for that.
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.requests.send(super::Request::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// The oldest segment of a log after `segment`, if any.
    fn later_segment(&self, dir: &Path, segment: u64) -> Option<u64> {
        let names = self.storage.list(dir).ok()?;
        names
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .filter(|&id| id > segment)
            .min()
    }
}

/// What a message record met on the way meant.
enum Offer {
    /// Taken, or not wanted: read on.
    Passed,
    /// It comes after everything wanted: stop before it (a later read starts there).
    Beyond,
    /// A wanted message before it was not found.
    Missed,
}

/// One `read_back` call's progress.
struct Reading<'a> {
    queue: u64,
    wanted: &'a [u64],
    /// Index in `wanted` of the next seq to find.
    next: usize,
    found: Vec<MessageRecord>,
    /// Whether a miss may still be answered with a rescan from the oldest segment (once).
    may_rescan: bool,
}

impl Reading<'_> {
    /// Takes what is wanted from `bytes` (read at `cursor`; `whole` when the read was not cut
    /// short by the end of the file), moving the cursor past what it consumed.
    fn pass(&mut self, cursor: &mut LogCursor, bytes: &[u8], whole: bool) -> Pass {
        let mut at = 0;
        if cursor.offset == 0 {
            if bytes.len() < SEGMENT_MAGIC.len() {
                return Pass::EndOfFile; // Missing, or created and not written yet.
            }
            if !bytes.starts_with(SEGMENT_MAGIC) {
                tracing::error!(queue = self.queue, segment = %segment_name(cursor.segment), "not a segment file (bad magic); skipped");
                return Pass::EndOfFile;
            }
            at = SEGMENT_MAGIC.len();
        }
        let outcome = loop {
            if self.next == self.wanted.len() {
                break Pass::Done;
            }
            match format::framed_at(bytes, at) {
                Framed::Record { tag, payload, next } => {
                    if tag == tag::MESSAGE {
                        match self.offer(cursor.segment, payload) {
                            Offer::Passed => {}
                            // A later message: the cursor stays before it.
                            Offer::Beyond => break Pass::Done,
                            Offer::Missed => break Pass::Missed,
                        }
                    }
                    at = next;
                }
                Framed::Incomplete { needed } if whole => break Pass::More { len: needed },
                Framed::Incomplete { .. } => break Pass::EndOfFile,
                Framed::Bad if self.may_rescan => break Pass::Missed,
                Framed::Bad => {
                    tracing::error!(
                        queue = self.queue,
                        segment = %segment_name(cursor.segment),
                        offset = cursor.offset + at as u64,
                        "checksum mismatch while reading back paged-out messages; damaged bytes skipped"
                    );
                    let good = (at + 1..bytes.len())
                        .find(|&k| matches!(format::framed_at(bytes, k), Framed::Record { .. }));
                    match good {
                        Some(k) => at = k,
                        None if whole => {
                            // Resume near the end: a record may straddle the chunk's edge.
                            at = bytes.len().saturating_sub(FRAME_OVERHEAD_BYTES).max(at + 1);
                            break Pass::More { len: 0 };
                        }
                        None => {
                            at = bytes.len();
                            break Pass::EndOfFile;
                        }
                    }
                }
            }
        };
        cursor.offset += at as u64;
        outcome
    }

    /// A message record met on the way: kept if it is the next one wanted.
    fn offer(&mut self, segment: u64, payload: &[u8]) -> Offer {
        let Ok(seq) = format::seq(payload) else {
            return Offer::Passed;
        };
        if self.may_rescan && self.wanted.get(self.next).is_some_and(|&w| w < seq) {
            return Offer::Missed;
        }
        while self.next < self.wanted.len() && self.wanted[self.next] < seq {
            self.missing(segment);
        }
        match self.wanted.get(self.next) {
            None => return Offer::Beyond,
            Some(&w) if w != seq => return Offer::Passed,
            Some(_) => {}
        }
        match format::message(payload) {
            Ok(m) => self.found.push(m),
            Err(format::Malformed(what)) => {
                tracing::error!(queue = self.queue, segment = %segment_name(segment), seq, "malformed {what} in a paged-out message");
            }
        }
        self.next += 1;
        Offer::Passed
    }

    /// The next wanted seq is not in the log where it should be.
    fn missing(&mut self, segment: u64) {
        tracing::error!(
            queue = self.queue,
            segment = %segment_name(segment),
            seq = self.wanted[self.next],
            "a paged-out message could not be read back; it is skipped here (its record, if sound, \
             is recovered at the next start)"
        );
        self.next += 1;
    }
}
