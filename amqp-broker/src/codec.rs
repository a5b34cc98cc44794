//! The wire format: frames in, frames out.
//!
//! Parsing is layered as in mini-redis: bytes → a cheap completeness and size check on the 7-byte
//! frame header → the frame's payload decoded by `amq-protocol` (methods and content headers), so
//! the method and property formats have one source of truth: RabbitMQ's own spec, from which
//! `amq-protocol` is generated. Frame envelopes are written here, directly into one output buffer
//! per batch, so a delivery is one copy of its body.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, basic::gen_properties, gen_class};
use amq_protocol::types::ShortString;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};

use crate::error::AmqpError;

/// The only protocol header the broker speaks: AMQP 0-9-1.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4) before the payload, frame-end (1) after it.
pub const FRAME_OVERHEAD: usize = 8;

/// One decoded frame.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A method on a channel (0 for the connection).
    Method(u16, AMQPClass),
    /// A content header: the class, the announced body size and the properties.
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Box<BasicProperties>,
    },
    /// A slice of a content body.
    Body(u16, Bytes),
    /// A heartbeat, on any channel (the connection decides whether the channel is legal).
    Heartbeat(u16),
}

/// Decodes the next frame from `buf`, if a whole one is there.
///
/// `Ok(None)` means "need more bytes". A frame bigger than `frame_max` is refused from its header
/// alone, before its payload is buffered.
pub fn decode(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    // RabbitMQ allows a payload of frame_max bytes (8 more than the spec's frame_max counts).
    if frame_max != 0 && size > frame_max as usize {
        return Err(AmqpError::frame_error(format_args!(
            "type {kind}, frame too large: payload of {size} bytes, negotiated frame_max {frame_max}"
        )));
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    if buf[7 + size] != FRAME_END {
        return Err(AmqpError::frame_error(format_args!(
            "type {kind}, frame end octet {:#04x} instead of 0xce",
            buf[7 + size]
        )));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    let frame = match kind {
        FRAME_METHOD => Frame::Method(channel, decode_method(&payload)?),
        FRAME_HEADER => decode_header(channel, &payload)?,
        FRAME_BODY => Frame::Body(channel, payload),
        FRAME_HEARTBEAT => Frame::Heartbeat(channel),
        other => {
            return Err(AmqpError::frame_error(format_args!(
                "unknown frame type {other}"
            )));
        }
    };
    Ok(Some(frame))
}

fn decode_method(payload: &[u8]) -> Result<AMQPClass, AmqpError> {
    if payload.len() < 4 {
        return Err(AmqpError::frame_error(
            "method frame shorter than its class and method ids",
        ));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if !is_known_method(class_id, method_id) {
        return Err(AmqpError::not_implemented(format_args!(
            "unknown method {class_id}/{method_id}"
        ))
        .on(class_id, method_id));
    }
    if let Some(class) = decode_hot_method(payload) {
        return Ok(class);
    }
    match amq_protocol::protocol::parse_class(payload) {
        Ok(([], class)) => Ok(class),
        _ => Err(AmqpError::frame_error(format_args!(
            "cannot decode the arguments of method {class_id}/{method_id}"
        ))
        .on(class_id, method_id)),
    }
}

/// `basic.publish` and `basic.ack` decoded by hand: their layouts are fixed, and the generic
/// parser spends most of its time building a named-flags list per method. `None` for any other
/// method, and for anything unusual (wrong length, a name that is not UTF-8), which the generic
/// parser then decodes or refuses exactly as before.
fn decode_hot_method(payload: &[u8]) -> Option<AMQPClass> {
    match payload.get(..4)? {
        [0, 60, 0, 40] => {
            // reserved-1 (2), exchange (short string), routing key (short string), flags (1).
            let (exchange, rest) = short_string(payload.get(6..)?)?;
            let (routing_key, rest) = short_string(rest)?;
            let [flags] = rest else { return None };
            Some(AMQPClass::Basic(basic::AMQPMethod::Publish(
                basic::Publish {
                    exchange,
                    routing_key,
                    mandatory: flags & 1 != 0,
                    immediate: flags & 2 != 0,
                },
            )))
        }
        [0, 60, 0, 80] if payload.len() == 13 => {
            let delivery_tag = u64::from_be_bytes(payload[4..12].try_into().ok()?);
            Some(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple: payload[12] & 1 != 0,
            })))
        }
        _ => None,
    }
}

/// A short string at the start of `bytes`, and what follows it.
fn short_string(bytes: &[u8]) -> Option<(ShortString, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (text, rest) = rest.split_at_checked(usize::from(len))?;
    Some((ShortString::from(std::str::from_utf8(text).ok()?), rest))
}

/// The methods of AMQP 0-9-1 as RabbitMQ extends it (class id, method ids).
fn is_known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

fn decode_header(channel: u16, payload: &[u8]) -> Result<Frame, AmqpError> {
    match amq_protocol::frame::parsing::parse_content_header(payload) {
        Ok(([], h)) => Ok(Frame::Header {
            channel,
            class_id: h.class_id,
            body_size: h.body_size,
            properties: Box::new(h.properties),
        }),
        _ => Err(AmqpError::frame_error("malformed content header")),
    }
}

/// The output buffer of one connection: frames are appended here and the whole batch is written
/// to the socket at once.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
    /// The last batch the socket writer finished with, emptied, to be filled again: without it
    /// every batch would be a fresh allocation grown by doubling. One slot, so an idle
    /// connection holds at most one spare buffer.
    spare: Option<Arc<Mutex<Option<Vec<u8>>>>>,
}

/// Where the socket writer gives written batches back to their [`FrameWriter`].
#[derive(Debug)]
pub struct Recycler(Arc<Mutex<Option<Vec<u8>>>>);

/// Batches larger than this are dropped after writing rather than kept.
const RECYCLE_MAX_BYTES: usize = 64 * 1024;

impl Recycler {
    /// Hands a written batch back (emptied); a large one, or one while the slot is taken, is
    /// freed instead. Never waits: the slot is only ever held for a swap.
    pub fn give_back(&self, mut batch: Vec<u8>) {
        if batch.capacity() <= RECYCLE_MAX_BYTES {
            if let Ok(mut slot) = self.0.try_lock() {
                batch.clear();
                slot.get_or_insert(batch);
            }
        }
    }
}

impl FrameWriter {
    /// A writer whose batches come back through the returned [`Recycler`] once written.
    pub fn recycling() -> (Self, Recycler) {
        let slot = Arc::new(Mutex::new(None));
        let writer = Self {
            buf: Vec::new(),
            spare: Some(slot.clone()),
        };
        (writer, Recycler(slot))
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the batch out, leaving the writer empty (with a recycled buffer when one is back).
    pub fn take(&mut self) -> Vec<u8> {
        let next = self
            .spare
            .as_ref()
            .and_then(|spare| spare.try_lock().ok()?.take())
            .unwrap_or_default();
        std::mem::replace(&mut self.buf, next)
    }

    /// Appends raw bytes (the protocol header).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a method frame.
    pub fn method(&mut self, channel: u16, method: &AMQPClass) {
        self.framed(FRAME_METHOD, channel, |buf| {
            let ctx = WriteContext::from(std::mem::take(buf));
            // Generating into a Vec cannot fail: it grows as needed.
            let ctx = gen_class(method)(ctx).expect("encoding into a Vec never fails");
            *buf = ctx.write;
        });
    }

    /// Appends `basic.deliver`, written by hand: it goes out once per message, and the generic
    /// generator builds a named-flags list for it each time. Names over 255 bytes (which no short
    /// string can hold) take the generic path, which refuses them as before.
    pub fn deliver(&mut self, channel: u16, deliver: &basic::Deliver) {
        let names = [
            deliver.consumer_tag.as_str(),
            deliver.exchange.as_str(),
            deliver.routing_key.as_str(),
        ];
        if names.iter().any(|n| n.len() > usize::from(u8::MAX)) {
            let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver.clone()));
            return self.method(channel, &method);
        }
        let size = 4 + 8 + 1 + names.iter().map(|n| 1 + n.len()).sum::<usize>();
        self.buf.reserve(size + FRAME_OVERHEAD);
        self.buf.push(FRAME_METHOD);
        self.buf.extend_from_slice(&channel.to_be_bytes());
        self.buf.extend_from_slice(&(size as u32).to_be_bytes());
        self.buf.extend_from_slice(&[0, 60, 0, 60]);
        self.short_string(names[0]);
        self.buf
            .extend_from_slice(&deliver.delivery_tag.to_be_bytes());
        self.buf.push(u8::from(deliver.redelivered));
        self.short_string(names[1]);
        self.short_string(names[2]);
        self.buf.push(FRAME_END);
    }

    /// Appends a short string (at most 255 bytes: checked by the caller).
    fn short_string(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Appends a heartbeat frame.
    pub fn heartbeat(&mut self) {
        self.buf
            .extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
    }

    /// Appends a content header and the body, split so that no frame exceeds `frame_max`.
    pub fn content(
        &mut self,
        channel: u16,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) {
        self.framed(FRAME_HEADER, channel, |buf| {
            buf.extend_from_slice(&60u16.to_be_bytes());
            buf.extend_from_slice(&0u16.to_be_bytes());
            buf.extend_from_slice(&(body.len() as u64).to_be_bytes());
            let ctx = WriteContext::from(std::mem::take(buf));
            let ctx = gen_properties(properties)(ctx).expect("encoding into a Vec never fails");
            *buf = ctx.write;
        });
        let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
        for piece in body.chunks(chunk) {
            self.buf.push(FRAME_BODY);
            self.buf.extend_from_slice(&channel.to_be_bytes());
            self.buf
                .extend_from_slice(&(piece.len() as u32).to_be_bytes());
            self.buf.extend_from_slice(piece);
            self.buf.push(FRAME_END);
        }
    }

    /// Writes type, channel and a size placeholder, lets `fill` append the payload, then patches
    /// the size and appends the frame-end octet.
    fn framed(&mut self, kind: u8, channel: u16, fill: impl FnOnce(&mut Vec<u8>)) {
        self.buf.push(kind);
        self.buf.extend_from_slice(&channel.to_be_bytes());
        let size_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        fill(&mut self.buf);
        let size = (self.buf.len() - size_at - 4) as u32;
        self.buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
        self.buf.push(FRAME_END);
    }
}

/// A short string from text the broker made up itself (never longer than 255 bytes).
pub(crate) fn short(s: impl Into<String>) -> ShortString {
    ShortString::from(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{AMQPClass, basic, channel};

    fn encoded(f: impl FnOnce(&mut FrameWriter)) -> Vec<u8> {
        let mut w = FrameWriter::default();
        f(&mut w);
        w.take()
    }

    /// Decodes all frames from `bytes` fed in two pieces split at `at`.
    fn decode_split(bytes: &[u8], at: usize, frame_max: u32) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in [&bytes[..at], &bytes[at..]] {
            buf.extend_from_slice(piece);
            while let Some(f) = decode(&mut buf, frame_max).expect("valid frames") {
                frames.push(f);
            }
        }
        assert!(buf.is_empty(), "everything consumed");
        frames
    }

    #[test]
    fn written_batches_are_reused_and_large_ones_freed() {
        let (mut w, recycler) = FrameWriter::recycling();
        w.heartbeat();
        let first = w.take();
        let address = first.as_ptr();
        recycler.give_back(first);
        w.heartbeat();
        let second = w.take(); // filled before the first came back; the first is next in line
        w.heartbeat();
        let third = w.take();
        assert_eq!(third.as_ptr(), address, "the written batch came back");
        assert_ne!(second.as_ptr(), address);
        recycler.give_back(Vec::with_capacity(RECYCLE_MAX_BYTES + 1));
        w.heartbeat();
        w.take();
        assert!(
            w.buf.capacity() <= RECYCLE_MAX_BYTES,
            "a large batch is not kept"
        );
    }

    #[test]
    fn a_method_round_trips_split_at_every_offset() {
        let open = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
        let bytes = encoded(|w| w.method(7, &open));
        for at in 0..=bytes.len() {
            assert_eq!(
                decode_split(&bytes, at, 4096),
                vec![Frame::Method(7, open.clone())]
            );
        }
    }

    #[test]
    fn content_is_split_by_frame_max_and_reassembles() {
        let props = BasicProperties::default().with_content_type("text/plain".into());
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let bytes = encoded(|w| w.content(1, &props, &body, 4096));
        for at in [0, 1, 7, 100, 4095, 4096, 4097, bytes.len()] {
            let frames = decode_split(&bytes, at, 4096);
            let Frame::Header {
                body_size,
                properties,
                ..
            } = &frames[0]
            else {
                panic!("header first, got {:?}", frames[0]);
            };
            assert_eq!(*body_size, 10_000);
            assert_eq!(**properties, props);
            let mut got = Vec::new();
            for f in &frames[1..] {
                let Frame::Body(1, piece) = f else {
                    panic!("body frames, got {f:?}")
                };
                assert!(piece.len() + FRAME_OVERHEAD <= 4096);
                got.extend_from_slice(piece);
            }
            assert_eq!(got, body);
        }
    }

    #[test]
    fn a_deliver_is_byte_for_byte_what_amq_protocol_generates() {
        let long = "x".repeat(255);
        for (tag, redelivered, exchange, key) in [
            ("amq.ctag-1", false, "", "a-queue"),
            ("c", true, "amq.topic", "a.b.c"),
            (long.as_str(), true, long.as_str(), long.as_str()),
        ] {
            let deliver = basic::Deliver {
                consumer_tag: tag.into(),
                delivery_tag: 0x0102_0304_0506_0708,
                redelivered,
                exchange: exchange.into(),
                routing_key: key.into(),
            };
            let generic = AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver.clone()));
            assert_eq!(
                encoded(|w| w.deliver(3, &deliver)),
                encoded(|w| w.method(3, &generic))
            );
        }
    }

    /// The hand-written decoders against amq-protocol's parser, on frames from its generator.
    #[test]
    fn publish_and_ack_decode_as_amq_protocol_parses_them() {
        let long = "k".repeat(255);
        let mut methods = Vec::new();
        for (exchange, key) in [("", "q"), ("amq.direct", long.as_str()), ("", "")] {
            for (mandatory, immediate) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                methods.push(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: exchange.into(),
                    routing_key: key.into(),
                    mandatory,
                    immediate,
                }));
            }
        }
        for (delivery_tag, multiple) in [(1, false), (u64::MAX, true), (0, true)] {
            methods.push(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            }));
        }
        for method in methods {
            let class = AMQPClass::Basic(method);
            let bytes = encoded(|w| w.method(1, &class));
            let payload = &bytes[7..bytes.len() - 1];
            let fast = decode_hot_method(payload).expect("a hot method");
            let (rest, generic) = amq_protocol::protocol::parse_class(payload).expect("parses");
            assert!(rest.is_empty());
            assert_eq!(fast, generic);
            assert_eq!(fast, class);
        }
    }

    #[test]
    fn unusual_publish_and_ack_frames_take_the_generic_path() {
        // Truncated, a trailing byte, a routing key that is not UTF-8, an ack one byte short.
        for payload in [
            &[0, 60, 0, 40, 0, 0, 0][..],
            &[0, 60, 0, 40, 0, 0, 0, 1, b'q', 0, 0][..],
            &[0, 60, 0, 40, 0, 0, 0, 1, 0xff, 0][..],
            &[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1][..],
        ] {
            assert_eq!(decode_hot_method(payload), None, "{payload:?}");
        }
        let mut bytes = vec![FRAME_METHOD, 0, 1, 0, 0, 0, 10];
        bytes.extend_from_slice(&[0, 60, 0, 40, 0, 0, 0, 1, 0xff, 0]);
        bytes.push(FRAME_END);
        let err = decode(&mut BytesMut::from(&bytes[..]), 4096).unwrap_err();
        assert_eq!(err.code, crate::error::reply::FRAME_ERROR);
    }

    #[test]
    fn an_incomplete_frame_asks_for_more() {
        let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        }));
        let bytes = encoded(|w| w.method(1, &qos));
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(decode(&mut buf, 4096), Ok(None));
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 1, 0, 0][..]);
        let err = decode(&mut buf, 4096).unwrap_err();
        assert_eq!(err.code, crate::error::reply::FRAME_ERROR);
    }

    #[test]
    fn a_bad_frame_end_is_a_frame_error() {
        let mut bytes = encoded(|w| w.heartbeat());
        *bytes.last_mut().unwrap() = 0;
        let err = decode(&mut BytesMut::from(&bytes[..]), 4096).unwrap_err();
        assert_eq!(err.code, crate::error::reply::FRAME_ERROR);
    }

    #[test]
    fn an_unknown_method_is_not_implemented() {
        let payload = [0, 60, 0, 99];
        let mut bytes = vec![FRAME_METHOD, 0, 1, 0, 0, 0, 4];
        bytes.extend_from_slice(&payload);
        bytes.push(FRAME_END);
        let err = decode(&mut BytesMut::from(&bytes[..]), 4096).unwrap_err();
        assert_eq!((err.code, err.class_id, err.method_id), (540, 60, 99));
    }
}
