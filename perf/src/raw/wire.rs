//! The frames the raw client writes and reads.
//!
//! The hot frames are written and read by hand: `basic.publish` with its content header (one
//! template per run, with only the body's stamp changing), `basic.ack` from a consumer,
//! `basic.deliver` and the broker's confirms (`basic.ack`/`basic.nack`). Everything else (the
//! handshake, `basic.qos`, `basic.consume`, closes) goes through `amq-protocol`'s generator and
//! parser, so those formats have one source of truth; the tests check the hand-written frames
//! byte for byte against that generator.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::{Buf, BytesMut};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4) before the payload, frame-end (1) after it.
const FRAME_OVERHEAD: usize = 8;

const CLASS_BASIC: u16 = 60;
const METHOD_PUBLISH: u16 = 40;
const METHOD_DELIVER: u16 = 60;
const METHOD_ACK: u16 = 80;
const METHOD_NACK: u16 = 120;
/// The `delivery-mode` bit of the basic class's property flags.
const FLAG_DELIVERY_MODE: u16 = 1 << 12;

/// What a frame from the broker means to a producer or a consumer.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// `basic.deliver`: a message follows (content header, then body frames).
    Deliver {
        /// The delivery tag to acknowledge.
        delivery_tag: u64,
    },
    /// A publisher confirm: `basic.ack` (`ack`) or `basic.nack` from the broker.
    Confirm {
        /// The publish sequence number it confirms (all up to it with `multiple`).
        delivery_tag: u64,
        /// Whether it covers every earlier unconfirmed publish too.
        multiple: bool,
        /// An ack (`true`) or a nack.
        ack: bool,
    },
    /// A content header: how many body bytes follow.
    Header {
        /// The body's size.
        body_size: u64,
    },
    /// A body frame.
    Body {
        /// Its size.
        len: usize,
        /// Its first 8 bytes as a little-endian `u64` (the send-time stamp when it is the first
        /// body frame of a message this tool sent); `None` when shorter.
        stamp: Option<u64>,
    },
    /// Any other method, decoded by `amq-protocol`.
    Method(u16, Box<AMQPClass>),
    /// A heartbeat.
    Heartbeat,
}

/// Decodes the next frame in `buf`, if a whole one is there (`Ok(None)`: need more bytes).
pub fn decode(buf: &mut BytesMut) -> anyhow::Result<Option<Incoming>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    if buf[7 + size] != FRAME_END {
        anyhow::bail!("frame end octet {:#04x} instead of 0xce", buf[7 + size]);
    }
    let payload = &buf[7..7 + size];
    let incoming = match kind {
        FRAME_METHOD => decode_method(channel, payload)?,
        FRAME_HEADER => {
            let body_size = payload
                .get(4..12)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| anyhow::anyhow!("content header of {size} bytes: too short"))?;
            Incoming::Header { body_size }
        }
        FRAME_BODY => Incoming::Body {
            len: size,
            stamp: payload
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        },
        FRAME_HEARTBEAT => Incoming::Heartbeat,
        other => anyhow::bail!("unknown frame type {other}"),
    };
    buf.advance(size + FRAME_OVERHEAD);
    Ok(Some(incoming))
}

/// The hot methods by hand (fixed layouts), the rest through `amq-protocol`.
fn decode_method(channel: u16, payload: &[u8]) -> anyhow::Result<Incoming> {
    let ids = |at: usize| {
        payload
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        payload
            .get(at..at + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    };
    let fast = match (ids(0), ids(2)) {
        (Some(CLASS_BASIC), Some(METHOD_DELIVER)) => {
            // consumer-tag (short string), then the delivery tag.
            let tag_len = payload.get(4).map(|&n| usize::from(n));
            tag_len
                .and_then(|n| u64_at(5 + n))
                .map(|delivery_tag| Incoming::Deliver { delivery_tag })
        }
        (Some(CLASS_BASIC), Some(method @ (METHOD_ACK | METHOD_NACK))) if payload.len() == 13 => {
            Some(Incoming::Confirm {
                delivery_tag: u64_at(4).expect("13 bytes"),
                multiple: payload[12] & 1 == 1,
                ack: method == METHOD_ACK,
            })
        }
        _ => None,
    };
    if let Some(incoming) = fast {
        return Ok(incoming);
    }
    match parse_class(payload) {
        Ok((_, class)) => Ok(Incoming::Method(channel, Box::new(class))),
        Err(_) => anyhow::bail!("cannot decode a method frame of {} bytes", payload.len()),
    }
}

/// Appends a method frame, encoded by `amq-protocol`.
pub fn method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let ctx = WriteContext::from(std::mem::take(out));
    // Generating into a Vec cannot fail: it grows as needed.
    let ctx = gen_frame(&frame)(ctx).expect("encoding into a Vec never fails");
    *out = ctx.write;
}

/// Appends a consumer's `basic.ack`.
pub fn ack(out: &mut Vec<u8>, channel: u16, delivery_tag: u64, multiple: bool) {
    out.push(FRAME_METHOD);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&METHOD_ACK.to_be_bytes());
    out.extend_from_slice(&delivery_tag.to_be_bytes());
    out.push(u8::from(multiple));
    out.push(FRAME_END);
}

/// The frames of one `basic.publish` to the default exchange, bodies of one size: everything but
/// the body is the same for every message of a run, so it is encoded once.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    /// The method frame and the content header frame.
    head: Vec<u8>,
    channel: u16,
    /// The largest body slice one body frame may carry (from the negotiated frame_max).
    chunk: usize,
}

impl PublishTemplate {
    /// A publish of `body_size`-byte bodies to `routing_key` through the default exchange, on
    /// `channel`, persistent (delivery mode 2) or not, with frames of at most `frame_max` bytes.
    pub fn new(
        channel: u16,
        routing_key: &str,
        persistent: bool,
        body_size: usize,
        frame_max: u32,
    ) -> anyhow::Result<Self> {
        let key = routing_key.as_bytes();
        let key_len = u8::try_from(key.len())
            .map_err(|_| anyhow::anyhow!("routing key '{routing_key}' is over 255 bytes"))?;
        let mut head = Vec::with_capacity(64 + key.len());
        // basic.publish: reserved-1, exchange "" (the default), routing key, no flags.
        head.push(FRAME_METHOD);
        head.extend_from_slice(&channel.to_be_bytes());
        head.extend_from_slice(&(4 + 2 + 1 + 1 + key.len() as u32 + 1).to_be_bytes());
        head.extend_from_slice(&CLASS_BASIC.to_be_bytes());
        head.extend_from_slice(&METHOD_PUBLISH.to_be_bytes());
        head.extend_from_slice(&[0, 0, 0, key_len]);
        head.extend_from_slice(key);
        head.extend_from_slice(&[0, FRAME_END]);
        // Content header: class, weight, body size, property flags (and delivery mode).
        let properties: &[u8] = if persistent {
            &[(FLAG_DELIVERY_MODE >> 8) as u8, 0, 2]
        } else {
            &[0, 0]
        };
        head.push(FRAME_HEADER);
        head.extend_from_slice(&channel.to_be_bytes());
        head.extend_from_slice(&(12 + properties.len() as u32).to_be_bytes());
        head.extend_from_slice(&CLASS_BASIC.to_be_bytes());
        head.extend_from_slice(&[0, 0]);
        head.extend_from_slice(&(body_size as u64).to_be_bytes());
        head.extend_from_slice(properties);
        head.push(FRAME_END);
        let chunk = if frame_max == 0 {
            usize::MAX
        } else {
            (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
        };
        Ok(Self {
            head,
            channel,
            chunk,
        })
    }

    /// Appends one publish of `body` (which must have the template's size).
    pub fn append(&self, out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(&self.head);
        for piece in body.chunks(self.chunk) {
            out.push(FRAME_BODY);
            out.extend_from_slice(&self.channel.to_be_bytes());
            out.extend_from_slice(&(piece.len() as u32).to_be_bytes());
            out.extend_from_slice(piece);
            out.push(FRAME_END);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::AMQPContentHeader;
    use amq_protocol::protocol::{BasicProperties, basic};

    fn generated(frames: &[AMQPFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            let ctx = gen_frame(frame)(WriteContext::from(out)).expect("encodes");
            out = ctx.write;
        }
        out
    }

    fn publish_frames(
        key: &str,
        properties: BasicProperties,
        body: &[u8],
        chunk: usize,
    ) -> Vec<AMQPFrame> {
        let mut frames = vec![
            AMQPFrame::Method(
                3,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: "".into(),
                    routing_key: key.into(),
                    mandatory: false,
                    immediate: false,
                })),
            ),
            AMQPFrame::Header(
                3,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties,
                },
            ),
        ];
        frames.extend(body.chunks(chunk).map(|c| AMQPFrame::Body(3, c.to_vec())));
        frames
    }

    #[test]
    fn a_publish_is_byte_for_byte_what_amq_protocol_generates() {
        let body: Vec<u8> = (0..100u8).collect();
        for (persistent, properties) in [
            (false, BasicProperties::default()),
            (true, BasicProperties::default().with_delivery_mode(2)),
        ] {
            let template = PublishTemplate::new(3, "a-queue", persistent, body.len(), 40).unwrap();
            let mut out = Vec::new();
            template.append(&mut out, &body);
            assert_eq!(
                out,
                generated(&publish_frames("a-queue", properties, &body, 32))
            );
        }
    }

    #[test]
    fn a_routing_key_over_255_bytes_is_refused() {
        let err = PublishTemplate::new(1, &"k".repeat(256), false, 8, 0).unwrap_err();
        assert!(err.to_string().contains("over 255 bytes"), "{err}");
    }

    #[test]
    fn an_ack_is_byte_for_byte_what_amq_protocol_generates() {
        for multiple in [false, true] {
            let mut out = Vec::new();
            ack(&mut out, 5, 0x0102_0304_0506_0708, multiple);
            let expected = generated(&[AMQPFrame::Method(
                5,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 0x0102_0304_0506_0708,
                    multiple,
                })),
            )]);
            assert_eq!(out, expected);
        }
    }

    /// Every frame of `bytes`, fed in two pieces split at `at`.
    fn decode_split(bytes: &[u8], at: usize) -> Vec<Incoming> {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in [&bytes[..at], &bytes[at..]] {
            buf.extend_from_slice(piece);
            while let Some(frame) = decode(&mut buf).expect("valid frames") {
                frames.push(frame);
            }
        }
        assert!(buf.is_empty(), "everything consumed");
        frames
    }

    #[test]
    fn a_delivery_and_confirms_decode_split_at_every_offset() {
        let body = 42u64.to_le_bytes().repeat(2);
        let bytes = generated(&[
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: "ctag".into(),
                    delivery_tag: 77,
                    redelivered: true,
                    exchange: "".into(),
                    routing_key: "q".into(),
                })),
            ),
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 16,
                    properties: BasicProperties::default().with_content_type("x".into()),
                },
            ),
            AMQPFrame::Body(1, body),
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 9,
                    multiple: true,
                })),
            ),
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: 10,
                    multiple: false,
                    requeue: false,
                })),
            ),
            AMQPFrame::Heartbeat,
        ]);
        let expected = [
            Incoming::Deliver { delivery_tag: 77 },
            Incoming::Header { body_size: 16 },
            Incoming::Body {
                len: 16,
                stamp: Some(42),
            },
            Incoming::Confirm {
                delivery_tag: 9,
                multiple: true,
                ack: true,
            },
            Incoming::Confirm {
                delivery_tag: 10,
                multiple: false,
                ack: false,
            },
            Incoming::Heartbeat,
        ];
        for at in 0..=bytes.len() {
            assert_eq!(decode_split(&bytes, at), expected, "split at {at}");
        }
    }

    #[test]
    fn other_methods_go_through_amq_protocol() {
        let qos_ok = AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {}));
        let mut out = Vec::new();
        method(&mut out, 2, qos_ok.clone());
        let mut buf = BytesMut::from(&out[..]);
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(Incoming::Method(2, Box::new(qos_ok)))
        );
    }

    #[test]
    fn a_bad_frame_end_or_type_is_an_error() {
        let mut bad_end = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(decode(&mut bad_end).is_err());
        let mut bad_type = BytesMut::from(&[9, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert!(decode(&mut bad_type).is_err());
        let mut short_deliver =
            BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0, 5, 0, 60, 0, 60, 9, FRAME_END][..]);
        assert!(decode(&mut short_deliver).is_err());
    }
}
