//! The bytes on disk: record framing, the records, and a scanner that tells good records from a
//! torn tail and from corruption in the middle.
//!
//! # Framing
//!
//! Segment files and the definitions file start with an 8-byte magic (`AMQSEG01`,
//! `AMQDEF01`) followed by records, each framed the same way:
//!
//! ```text
//! offset  size  field
//! 0       1     tag           which record this is (see below)
//! 1       4     length        payload length in bytes, u32 little-endian (at most MAX_PAYLOAD_BYTES)
//! 5       len   payload       tag-specific, below
//! 5+len   4     crc32         CRC-32 (IEEE, as zlib) of tag, length and payload; u32 little-endian
//! ```
//!
//! A record is trusted only if its tag is known, its length fits in the file and its checksum
//! matches. Integers in payloads are little-endian; `str8` is a u8 length then that many bytes
//! (AMQP short strings); AMQP structures (field tables, content-header properties) are stored
//! exactly as on the wire (big-endian, as AMQP defines them) so `amq-protocol` stays their one
//! encoder and decoder.
//!
//! # Segment records (one queue's log)
//!
//! - `M` (0x4D) message: `seq u64`, `exchange str8`, `routing_key str8`,
//!   `properties_len u32`, `properties` (content-header property flags and values, as in a
//!   content header frame after its body size), then the body (the rest of the payload).
//! - `A` (0x41) settled: `seq u64`. The message left the queue for good (acked, rejected
//!   without requeue, dropped by `x-max-length`, purged); it is not recovered.
//! - `D` (0x44) delivered: `seq u64`. The message went to a consumer; if it is recovered, it is
//!   redelivered with `redelivered = true`.
//!
//! # Delayed-message records (the `delayed/` log)
//!
//! Persistent messages held by durable `x-delayed-message` exchanges live in one more log of
//! segments, `delayed/`, with the same framing and the same reclaiming as a queue's:
//!
//! - `T` (0x54) timed message: `due_unix_ms u64` (when it is due: milliseconds since the Unix
//!   epoch, wall clock, so that it survives a restart), `key_count u16`, then `key_count` routing
//!   keys as `str8` (its routing key, `CC` and `BCC` ones: `BCC` is gone from the stored
//!   properties), then exactly an `M` payload (`seq`, exchange — the delayed exchange it is
//!   routed from when due —, routing key, properties, body).
//! - `A` (0x41) settled: `seq u64`. The message was routed when due (written only after the
//!   queue records of that routing are synced, so a crash in between delivers it twice, never
//!   zero times), or its exchange no longer existed at recovery.
//!
//! # Definitions records
//!
//! - `X` (0x58) exchange: `name str8`, `type str8`, `flags u8` (bit 0 auto-delete, bit 1
//!   internal), `arguments` (AMQP field table).
//! - `Q` (0x51) queue: `id u64` (names its directory `queues/<id>`), `name str8`, `flags u8`
//!   (bit 0 auto-delete), `arguments` (AMQP field table).
//! - `B` (0x42) binding: `source str8`, `destination_kind u8` (0 queue, 1 exchange),
//!   `destination str8`, `routing_key str8`, `arguments` (AMQP field table).

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::protocol::basic::{gen_properties, parse_properties};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{FieldTable, ShortString};
use bytes::Bytes;

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"AMQSEG01";
/// First bytes of the definitions file.
pub(crate) const DEFINITIONS_MAGIC: &[u8; 8] = b"AMQDEF01";
/// Tag, length and checksum around each payload.
pub(crate) const FRAME_OVERHEAD_BYTES: usize = 1 + 4 + 4;
/// The largest payload a record may declare (bounds what a corrupt length can make us read).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 1 << 30;

/// Record tags.
pub(crate) mod tag {
    pub const MESSAGE: u8 = b'M';
    pub const SETTLED: u8 = b'A';
    pub const DELIVERED: u8 = b'D';
    pub const EXCHANGE: u8 = b'X';
    pub const QUEUE: u8 = b'Q';
    pub const BINDING: u8 = b'B';
    pub const DELAYED: u8 = b'T';
    pub const ALL: &[u8] = &[
        MESSAGE, SETTLED, DELIVERED, EXCHANGE, QUEUE, BINDING, DELAYED,
    ];
}

/// Appends one framed record whose payload `fill` writes.
pub(crate) fn frame(out: &mut Vec<u8>, tag: u8, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let len = out.len() - start - 5;
    assert!(len <= MAX_PAYLOAD_BYTES, "record payload of {len} bytes");
    out[start + 1..start + 5].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The record at `at`, if it is whole and its checksum matches: (tag, payload, next offset).
fn record_at(bytes: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let head = bytes.get(at..at + 5)?;
    if !tag::ALL.contains(&head[0]) {
        return None;
    }
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD_BYTES {
        return None;
    }
    let end = at.checked_add(FRAME_OVERHEAD_BYTES + len)?;
    let framed = bytes.get(at..end)?;
    let (covered, crc) = framed.split_at(5 + len);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    (crc32fast::hash(covered) == crc).then(|| (head[0], &covered[5..], end))
}

/// The bytes at an offset, as seen by a reader that may meet a record still being appended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framed<'a> {
    /// A good record, and the offset after it.
    Record {
        tag: u8,
        payload: &'a [u8],
        next: usize,
    },
    /// Too few bytes to tell: a whole record there would need `needed` bytes from the offset.
    Incomplete { needed: usize },
    /// Enough bytes, but no good record starts here (damage).
    Bad,
}

/// Classifies the bytes at `at` (see [`Framed`]).
pub(crate) fn framed_at(bytes: &[u8], at: usize) -> Framed<'_> {
    let Some(head) = bytes.get(at..at + 5) else {
        return Framed::Incomplete { needed: 5 };
    };
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if !tag::ALL.contains(&head[0]) || len > MAX_PAYLOAD_BYTES {
        return Framed::Bad;
    }
    if bytes.len() - at < FRAME_OVERHEAD_BYTES + len {
        return Framed::Incomplete {
            needed: FRAME_OVERHEAD_BYTES + len,
        };
    }
    match record_at(bytes, at) {
        Some((tag, payload, next)) => Framed::Record { tag, payload, next },
        None => Framed::Bad,
    }
}

/// What a scan of a file found, in file order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scanned<'a> {
    /// A good record at `offset`.
    Record {
        offset: usize,
        tag: u8,
        payload: &'a [u8],
    },
    /// Bytes from `offset` to `resume` are not a record, but good records follow: a flipped
    /// byte or a bad sector. Reported and skipped.
    Corrupt { offset: usize, resume: usize },
    /// From `offset` to the end nothing is a good record: a torn write or garbage after the last
    /// record (the crash case). The file is cut there.
    Tail { offset: usize },
}

/// Scans the records of a file from `start` (just after the magic).
pub(crate) fn scan(bytes: &[u8], start: usize) -> Vec<Scanned<'_>> {
    let mut found = Vec::new();
    let mut at = start;
    while at < bytes.len() {
        if let Some((tag, payload, next)) = record_at(bytes, at) {
            found.push(Scanned::Record {
                offset: at,
                tag,
                payload,
            });
            at = next;
            continue;
        }
        // Look for the next good record: if there is one, this is damage in the middle.
        match (at + 1..bytes.len()).find(|&k| record_at(bytes, k).is_some()) {
            Some(resume) => {
                found.push(Scanned::Corrupt { offset: at, resume });
                at = resume;
            }
            None => {
                found.push(Scanned::Tail { offset: at });
                break;
            }
        }
    }
    found
}

/// A cursor over a payload; every read says what it expected when the bytes run out.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

/// A payload that does not decode although its checksum matched (a bug, or a future format).
#[derive(Debug)]
pub(crate) struct Malformed(pub &'static str);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, Malformed> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn str8(&mut self, what: &'static str) -> Result<ShortString, Malformed> {
        let len = self.u8(what)? as usize;
        let b = self.take(len, what)?;
        let s = std::str::from_utf8(b).map_err(|_| Malformed(what))?;
        Ok(ShortString::from(s.to_owned()))
    }

    pub fn table(&mut self, what: &'static str) -> Result<FieldTable, Malformed> {
        let (rest, table) = parse_field_table(self.bytes).map_err(|_| Malformed(what))?;
        self.bytes = rest;
        Ok(table)
    }

    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

pub(crate) fn put_str8(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let len = b.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&b[..len]);
}

pub(crate) fn put_table(out: &mut Vec<u8>, table: &FieldTable) {
    let ctx = WriteContext::from(std::mem::take(out));
    let ctx = gen_field_table(table)(ctx).expect("encoding into a Vec never fails");
    *out = ctx.write;
}

/// A message record's fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessageRecord {
    pub seq: u64,
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: BasicProperties,
    pub body: Bytes,
}

/// Appends an `M` record.
pub(crate) fn put_message(
    out: &mut Vec<u8>,
    seq: u64,
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
) {
    frame(out, tag::MESSAGE, |buf| {
        put_message_payload(buf, seq, exchange, routing_key, properties, body);
    });
}

/// An `M` payload (also the tail of a `T` payload).
fn put_message_payload(
    buf: &mut Vec<u8>,
    seq: u64,
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
) {
    buf.extend_from_slice(&seq.to_le_bytes());
    put_str8(buf, exchange);
    put_str8(buf, routing_key);
    let len_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let ctx = WriteContext::from(std::mem::take(buf));
    let ctx = gen_properties(properties)(ctx).expect("encoding into a Vec never fails");
    *buf = ctx.write;
    let len = (buf.len() - len_at - 4) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(body);
}

/// A `T` record's fields: when a delayed message is due and what it is routed by.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DelayedRecord {
    pub due_unix_ms: u64,
    pub keys: Vec<String>,
    pub message: MessageRecord,
}

/// A `T` payload (unframed): `msg` as in `M`, published to the delayed exchange `msg.exchange`.
/// The delay timer holds delayed messages in this form (a few dozen bytes beside the body,
/// where the decoded message would take a kilobyte), and the store frames it as it is.
pub(crate) fn delayed_payload(
    due_unix_ms: u64,
    keys: &[String],
    seq: u64,
    msg: &crate::message::Message,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(msg.body.len() + 64);
    buf.extend_from_slice(&due_unix_ms.to_le_bytes());
    let keys = &keys[..keys.len().min(usize::from(u16::MAX))];
    buf.extend_from_slice(&(keys.len() as u16).to_le_bytes());
    for k in keys {
        put_str8(&mut buf, k);
    }
    put_message_payload(
        &mut buf,
        seq,
        msg.exchange.as_str(),
        msg.routing_key.as_str(),
        &msg.properties,
        &msg.body,
    );
    buf
}

/// A `T` payload's due time and seq, without decoding the message.
pub(crate) fn delayed_key(payload: &[u8]) -> Result<(u64, u64), Malformed> {
    let mut r = Reader::new(payload);
    let due_unix_ms = r.u64("delayed due time")?;
    for _ in 0..r.u16("delayed key count")? {
        let len = r.u8("delayed routing key")?;
        r.take(usize::from(len), "delayed routing key")?;
    }
    Ok((due_unix_ms, r.u64("message seq")?))
}

/// Decodes a `T` payload.
pub(crate) fn delayed(payload: &[u8]) -> Result<DelayedRecord, Malformed> {
    let mut r = Reader::new(payload);
    let due_unix_ms = r.u64("delayed due time")?;
    let count = r.u16("delayed key count")?;
    let keys = (0..count)
        .map(|_| r.str8("delayed routing key").map(|k| k.to_string()))
        .collect::<Result<_, _>>()?;
    Ok(DelayedRecord {
        due_unix_ms,
        keys,
        message: message(r.rest())?,
    })
}

/// Decodes an `M` payload.
pub(crate) fn message(payload: &[u8]) -> Result<MessageRecord, Malformed> {
    let mut r = Reader::new(payload);
    let seq = r.u64("message seq")?;
    let exchange = r.str8("message exchange")?;
    let routing_key = r.str8("message routing key")?;
    let len = r.u32("properties length")? as usize;
    let props = r.take(len, "properties")?;
    let (_, properties) = parse_properties(props).map_err(|_| Malformed("properties"))?;
    Ok(MessageRecord {
        seq,
        exchange,
        routing_key,
        properties,
        body: Bytes::copy_from_slice(r.rest()),
    })
}

/// What recovery keeps of an `M` record: everything but the body, which stays on disk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessageHeader {
    pub seq: u64,
    pub properties: BasicProperties,
    pub body_bytes: usize,
}

/// Decodes an `M` payload without copying its body.
pub(crate) fn message_header(payload: &[u8]) -> Result<MessageHeader, Malformed> {
    let mut r = Reader::new(payload);
    let seq = r.u64("message seq")?;
    r.str8("message exchange")?;
    r.str8("message routing key")?;
    let len = r.u32("properties length")? as usize;
    let props = r.take(len, "properties")?;
    let (_, properties) = parse_properties(props).map_err(|_| Malformed("properties"))?;
    Ok(MessageHeader {
        seq,
        properties,
        body_bytes: r.rest().len(),
    })
}

/// Appends an `A` (settled) or `D` (delivered) record.
pub(crate) fn put_seq(out: &mut Vec<u8>, tag: u8, seq: u64) {
    frame(out, tag, |buf| buf.extend_from_slice(&seq.to_le_bytes()));
}

/// Decodes an `A` or `D` payload.
pub(crate) fn seq(payload: &[u8]) -> Result<u64, Malformed> {
    Reader::new(payload).u64("seq")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_records() -> Vec<u8> {
        let mut out = SEGMENT_MAGIC.to_vec();
        put_message(&mut out, 7, "x", "k", &BasicProperties::default(), b"hello");
        put_seq(&mut out, tag::SETTLED, 7);
        out
    }

    #[test]
    fn a_message_round_trips() {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("text/plain".into());
        let mut out = Vec::new();
        put_message(&mut out, 42, "ex", "key", &props, b"body");
        let found = scan(&out, 0);
        let [Scanned::Record { tag, payload, .. }] = found.as_slice() else {
            panic!("one record expected, got {found:?}");
        };
        assert_eq!(*tag, tag::MESSAGE);
        let m = message(payload).unwrap();
        assert_eq!(
            (m.seq, m.exchange.as_str(), m.routing_key.as_str()),
            (42, "ex", "key")
        );
        assert_eq!(m.properties, props);
        assert_eq!(&m.body[..], b"body");
    }

    #[test]
    fn a_delayed_message_round_trips() {
        let props = BasicProperties::default().with_delivery_mode(2);
        let keys = vec!["k".to_owned(), "cc".to_owned()];
        let mut out = Vec::new();
        let msg = crate::message::Message {
            exchange: "dx".into(),
            routing_key: "k".into(),
            properties: props.clone(),
            body: Bytes::from_static(b"later"),
        };
        let payload = delayed_payload(1_700_000_000_123, &keys, 9, &msg);
        assert_eq!(delayed_key(&payload).unwrap(), (1_700_000_000_123, 9));
        frame(&mut out, tag::DELAYED, |b| b.extend_from_slice(&payload));
        assert_eq!(out[0], b'T');
        let found = scan(&out, 0);
        let [Scanned::Record { tag, payload, .. }] = found.as_slice() else {
            panic!("one record expected, got {found:?}");
        };
        assert_eq!(*tag, tag::DELAYED);
        let d = delayed(payload).unwrap();
        assert_eq!((d.due_unix_ms, &d.keys[..]), (1_700_000_000_123, &keys[..]));
        assert_eq!((d.message.seq, d.message.exchange.as_str()), (9, "dx"));
        assert_eq!(d.message.routing_key.as_str(), "k");
        assert_eq!(d.message.properties, props);
        assert_eq!(&d.message.body[..], b"later");
    }

    #[test]
    fn the_framing_is_as_documented() {
        let mut out = Vec::new();
        put_seq(&mut out, tag::SETTLED, 1);
        assert_eq!(out[0], b'A');
        assert_eq!(&out[1..5], &8u32.to_le_bytes());
        assert_eq!(&out[5..13], &1u64.to_le_bytes());
        assert_eq!(&out[13..17], &crc32fast::hash(&out[..13]).to_le_bytes());
    }

    #[test]
    fn a_torn_last_record_is_a_tail_at_every_cut() {
        let full = two_records();
        let last = match scan(&full, 8)[1] {
            Scanned::Record { offset, .. } => offset,
            ref other => panic!("{other:?}"),
        };
        for cut in last + 1..full.len() {
            let found = scan(&full[..cut], 8);
            assert_eq!(found.len(), 2, "cut at {cut}");
            assert_eq!(found[1], Scanned::Tail { offset: last }, "cut at {cut}");
        }
    }

    #[test]
    fn a_reader_tells_a_record_being_written_from_damage() {
        let full = two_records();
        let Framed::Record { next, .. } = framed_at(&full, 8) else {
            panic!("the first record is whole");
        };
        for cut in next + 1..full.len() {
            assert!(
                matches!(framed_at(&full[..cut], next), Framed::Incomplete { .. }),
                "cut at {cut}"
            );
        }
        let mut damaged = full.clone();
        damaged[next + 6] ^= 1;
        assert_eq!(framed_at(&damaged, next), Framed::Bad);
        let header = message_header(match framed_at(&full, 8) {
            Framed::Record { payload, .. } => payload,
            other => panic!("{other:?}"),
        })
        .unwrap();
        assert_eq!((header.seq, header.body_bytes), (7, 5));
    }

    #[test]
    fn a_flipped_byte_in_the_first_record_is_skipped_not_trusted() {
        let mut bytes = two_records();
        bytes[20] ^= 0x40;
        let found = scan(&bytes, 8);
        assert!(matches!(found[0], Scanned::Corrupt { offset: 8, .. }));
        assert!(matches!(found[1], Scanned::Record { tag: b'A', .. }));
    }
}
