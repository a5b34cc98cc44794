//! The wire format: frames in, frames out.
//!
//! Parsing is layered as in mini-redis: bytes → a cheap completeness and size check on the 7-byte
//! frame header → the frame's payload decoded by `amq-protocol` (methods and content headers), so
//! the method and property formats have one source of truth: RabbitMQ's own spec, from which
//! `amq-protocol` is generated. Frame envelopes are written here, directly into one output buffer
//! per batch, so a delivery is one copy of its body.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic::gen_properties, gen_class};
use amq_protocol::types::ShortString;
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
    match amq_protocol::protocol::parse_class(payload) {
        Ok(([], class)) => Ok(class),
        _ => Err(AmqpError::frame_error(format_args!(
            "cannot decode the arguments of method {class_id}/{method_id}"
        ))
        .on(class_id, method_id)),
    }
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
}

impl FrameWriter {
    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the batch out, leaving the writer empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
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
