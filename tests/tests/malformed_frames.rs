//! A deterministic property test: arbitrary sequences of well-formed and malformed frames sent
//! to an in-process broker after a normal handshake.
//!
//! Whatever arrives, the broker must not panic, must never leave the client hanging (after our
//! end of input it answers and closes), must answer what the protocol makes fatal with the
//! protocol's close code, must keep a well-formed session open, and must serve a fresh
//! connection afterwards. A tiny model of the session predicts the outcome: well-formed frames
//! on the channels that are open keep the connection open, a frame for a channel that is not
//! open (or a second `channel.open`) is 504 CHANNEL_ERROR, a broken frame (wrong end octet,
//! unknown type, larger than frame_max) is 501 FRAME_ERROR. Random method ids, random argument
//! bytes and raw garbage have no single right answer; for them any close must carry a protocol
//! error code (never 541 INTERNAL_ERROR).
//!
//! The seed is fixed, so every run sends the same sequences; a failure is shrunk to a minimal
//! sequence and printed.

use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, connection, queue};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tests::TestBroker;
use tests::raw::{self, FRAME_END, RawClient, Read, WAIT};

/// How many sequences one run sends (about 10 ms each in a debug build).
const CASES: u32 = 500;
/// The fixed seed that makes the run deterministic.
const SEED: [u8; 32] = *b"amqp-broker malformed frames 001";
/// Channels the sequences use: few, so that opens, closes and their misuse collide often.
const CHANNELS: std::ops::RangeInclusive<u16> = 1..=3;

/// One thing the client sends.
#[derive(Clone, Debug)]
enum Op {
    Heartbeat,
    ChannelOpen(u16),
    ChannelClose(u16),
    /// An exclusive server-named queue.
    QueueDeclare(u16),
    Qos(u16, u16),
    /// `basic.publish` to the default exchange, its content header, and the body in two frames.
    Publish(u16, Vec<u8>),
    /// A frame whose last octet is not 0xCE.
    BadFrameEnd {
        kind: u8,
        channel: u16,
        payload: Vec<u8>,
        end: u8,
    },
    /// A frame of a type AMQP 0-9-1 does not have.
    UnknownFrameType {
        kind: u8,
        channel: u16,
        payload: Vec<u8>,
    },
    /// A frame header announcing more than frame_max; no payload follows.
    Oversized {
        kind: u8,
        channel: u16,
        size: u32,
    },
    /// A method frame with any ids and argument bytes.
    RawMethod {
        channel: u16,
        class_id: u16,
        method_id: u16,
        args: Vec<u8>,
    },
    /// Bytes that need not be a frame at all.
    Garbage(Vec<u8>),
}

impl Op {
    fn bytes(&self) -> Vec<u8> {
        let method = |ch: u16, m: AMQPClass| raw::encode(&AMQPFrame::Method(ch, m));
        match self {
            Op::Heartbeat => raw::encode(&AMQPFrame::Heartbeat),
            Op::ChannelOpen(ch) => method(
                *ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ),
            Op::ChannelClose(ch) => method(
                *ch,
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            ),
            Op::QueueDeclare(ch) => method(
                *ch,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: "".into(),
                    passive: false,
                    durable: false,
                    exclusive: true,
                    auto_delete: true,
                    nowait: false,
                    arguments: Default::default(),
                })),
            ),
            Op::Qos(ch, count) => method(
                *ch,
                AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                    prefetch_count: *count,
                    global: false,
                })),
            ),
            Op::Publish(ch, body) => {
                let mut out = method(
                    *ch,
                    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: "".into(),
                        routing_key: "malformed-frames.nowhere".into(),
                        mandatory: false,
                        immediate: false,
                    })),
                );
                out.extend(raw::encode(&AMQPFrame::Header(
                    *ch,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: body.len() as u64,
                        properties: BasicProperties::default(),
                    },
                )));
                let (a, b) = body.split_at(body.len() / 2);
                for part in [a, b] {
                    if !part.is_empty() {
                        out.extend(raw::raw_frame(raw::FRAME_BODY, *ch, part, FRAME_END));
                    }
                }
                out
            }
            Op::BadFrameEnd {
                kind,
                channel,
                payload,
                end,
            } => raw::raw_frame(*kind, *channel, payload, *end),
            Op::UnknownFrameType {
                kind,
                channel,
                payload,
            } => raw::raw_frame(*kind, *channel, payload, FRAME_END),
            Op::Oversized {
                kind,
                channel,
                size,
            } => {
                let mut out = vec![*kind];
                out.extend_from_slice(&channel.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out
            }
            Op::RawMethod {
                channel,
                class_id,
                method_id,
                args,
            } => raw::raw_method(*channel, *class_id, *method_id, args),
            Op::Garbage(bytes) => bytes.clone(),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let known_classes = select(vec![10u16, 20, 40, 50, 60, 85, 90]);
    let known_methods = select(vec![
        10u16, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 70, 80, 90, 100, 110, 120,
    ]);
    prop_oneof![
        2 => Just(Op::Heartbeat),
        6 => CHANNELS.prop_map(Op::ChannelOpen),
        2 => CHANNELS.prop_map(Op::ChannelClose),
        3 => CHANNELS.prop_map(Op::QueueDeclare),
        2 => (CHANNELS, any::<u16>()).prop_map(|(ch, n)| Op::Qos(ch, n)),
        4 => (CHANNELS, vec(any::<u8>(), 0..300)).prop_map(|(ch, body)| Op::Publish(ch, body)),
        1 => (select(vec![1u8, 2, 3, 8]), 0..=3u16, vec(any::<u8>(), 0..32), any::<u8>())
            .prop_filter("a wrong end octet", |(_, _, _, end)| *end != FRAME_END)
            .prop_map(|(kind, channel, payload, end)| Op::BadFrameEnd { kind, channel, payload, end }),
        1 => (prop_oneof![Just(0u8), 4u8..=7, 9u8..=255], 0..=3u16, vec(any::<u8>(), 0..16))
            .prop_map(|(kind, channel, payload)| Op::UnknownFrameType { kind, channel, payload }),
        1 => (select(vec![1u8, 2, 3, 8]), 0..=3u16, 131_073u32..)
            .prop_map(|(kind, channel, size)| Op::Oversized { kind, channel, size }),
        3 => (0..=3u16, prop_oneof![known_classes, any::<u16>()], prop_oneof![known_methods, any::<u16>()],
              vec(any::<u8>(), 0..24))
            .prop_map(|(channel, class_id, method_id, args)| Op::RawMethod { channel, class_id, method_id, args }),
        1 => vec(any::<u8>(), 1..48).prop_map(Op::Garbage),
    ]
}

/// Frames that are legal on a channel that is open.
fn legal_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Heartbeat),
        2 => CHANNELS.prop_map(Op::QueueDeclare),
        1 => (CHANNELS, any::<u16>()).prop_map(|(ch, n)| Op::Qos(ch, n)),
        3 => (CHANNELS, vec(any::<u8>(), 0..300)).prop_map(|(ch, body)| Op::Publish(ch, body)),
    ]
}

/// Half free-for-all sequences, half legal sessions (every channel opened, then legal frames)
/// with a short arbitrary tail, so that legal sessions are common too.
fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop_oneof![
        vec(op(), 1..12),
        (vec(legal_op(), 0..10), vec(op(), 0..3)).prop_map(|(legal, tail)| {
            CHANNELS
                .map(Op::ChannelOpen)
                .chain(legal)
                .chain(tail)
                .collect()
        }),
    ]
}

/// What the broker must do with a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Everything was well-formed and legal: the connection stays open.
    Open,
    /// `connection.close` with this reply code.
    Close(u16),
    /// No single right answer; any close must carry a protocol error code.
    Any,
}

/// Walks the sequence with the set of open channels; returns how many ops to send (none after
/// the one that must close the connection) and what the broker must do.
fn model(ops: &[Op]) -> (usize, Expect) {
    let mut open = std::collections::BTreeSet::new();
    for (i, op) in ops.iter().enumerate() {
        let fatal = |code| (i + 1, Expect::Close(code));
        match op {
            Op::Heartbeat => {}
            Op::ChannelOpen(ch) if !open.insert(*ch) => return fatal(504),
            Op::ChannelOpen(_) => {}
            Op::ChannelClose(ch) if !open.remove(ch) => return fatal(504),
            Op::ChannelClose(_) => {}
            Op::QueueDeclare(ch) | Op::Qos(ch, _) | Op::Publish(ch, _) if !open.contains(ch) => {
                return fatal(504);
            }
            Op::QueueDeclare(_) | Op::Qos(..) | Op::Publish(..) => {}
            Op::BadFrameEnd { .. } | Op::UnknownFrameType { .. } | Op::Oversized { .. } => {
                return fatal(501);
            }
            Op::RawMethod { .. } | Op::Garbage(_) => return (ops.len(), Expect::Any),
        }
    }
    (ops.len(), Expect::Open)
}

/// Reply codes a broker may close a connection with when the client broke the protocol.
const PROTOCOL_ERRORS: [u16; 8] = [501, 502, 503, 504, 505, 506, 530, 540];

fn connection_close(frames: &[AMQPFrame]) -> Option<connection::Close> {
    frames.iter().find_map(|f| match f {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
            Some(c.clone())
        }
        _ => None,
    })
}

/// Sends one sequence after a handshake and checks what the broker does with it.
async fn check(addr: &str, ops: &[Op]) {
    let (count, expect) = model(ops);
    let (mut c, _) = RawClient::handshake(addr).await;
    let bytes: Vec<u8> = ops[..count].iter().flat_map(Op::bytes).collect();
    c.send_bytes(&bytes).await;
    match expect {
        Expect::Open => {
            // Everything legal: a clean close must be answered, with no error on the way.
            c.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: 200,
                    reply_text: "done".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            )
            .await;
            loop {
                match c.read_within(WAIT).await {
                    Read::Frame(AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                    )) => {
                        break;
                    }
                    Read::Frame(
                        f @ AMQPFrame::Method(
                            _,
                            AMQPClass::Connection(connection::AMQPMethod::Close(_))
                            | AMQPClass::Channel(channel::AMQPMethod::Close(_)),
                        ),
                    ) => panic!("a legal session was closed: {f:?}"),
                    Read::Frame(_) => {}
                    other => panic!("expected connection.close-ok, got {other:?}"),
                }
            }
            c.shutdown_and_expect_eof().await;
        }
        Expect::Close(code) => {
            let frames = c.finish_and_read_all().await;
            let close = connection_close(&frames)
                .unwrap_or_else(|| panic!("expected connection.close {code}, got {frames:?}"));
            assert_eq!(close.reply_code, code, "{close:?}");
            assert!(!close.reply_text.as_str().is_empty(), "{close:?}");
        }
        Expect::Any => {
            let frames = c.finish_and_read_all().await;
            if let Some(close) = connection_close(&frames) {
                assert!(
                    PROTOCOL_ERRORS.contains(&close.reply_code),
                    "a close with a code that is not a protocol error: {close:?}"
                );
            }
        }
    }
    raw::assert_serves(addr).await;
}

/// Panics on the runtime's worker threads, where the broker's tasks run (the test's own
/// assertions run on the test thread, inside `block_on`).
static BROKER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_broker_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                BROKER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

#[test]
fn arbitrary_frame_sequences_are_answered_and_never_crash_the_broker() {
    count_broker_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broker = rt.block_on(TestBroker::bundled());
    let addr = broker.addr();
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let expected: [Cell<usize>; 3] = Default::default();
    let result = runner.run(&sequence(), |ops| {
        let outcome = &expected[match model(&ops).1 {
            Expect::Open => 0,
            Expect::Close(_) => 1,
            Expect::Any => 2,
        }];
        outcome.set(outcome.get() + 1);
        rt.block_on(check(&addr, &ops));
        prop_assert_eq!(
            BROKER_PANICS.load(Ordering::SeqCst),
            0,
            "the broker panicked"
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The mix must exercise every outcome, or the generator has drifted.
    let expected = expected.map(|n| n.get());
    println!("{CASES} sequences; expected outcome open, close, any: {expected:?}");
    assert!(
        expected.iter().all(|&n| n >= 20),
        "cases per outcome (open, close, any): {expected:?}"
    );
    rt.block_on(broker.shutdown());
}
