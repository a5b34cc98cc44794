//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by default; not part of
//! the API). They reach private parts of the broker with plain types only, so the targets do not
//! depend on how those parts are written.

use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, BasicProperties, channel, connection};
use amq_protocol::types::{FieldTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::Broker;
use crate::codec::{self, Frame, FrameWriter, PROTOCOL_HEADER};

/// The AMQP types the targets build methods from (the broker's own `amq-protocol`).
pub use amq_protocol::{protocol, types};

/// What decoding a byte stream produced: each frame (its debug text), and the reply code and
/// text of the refusal that stopped decoding, if one did.
pub type Decoded = (Vec<String>, Option<(u16, String)>);

/// Decodes `bytes` as a connection reads them: fed `chunk` bytes at a time (at least 1), every
/// whole frame decoded after each read, until the bytes run out or a frame is refused.
///
/// The same bytes must decode the same way whatever the chunk size: a frame split across reads
/// is still one frame, and a refusal happens at the same frame.
pub fn decode_in_chunks(bytes: &[u8], chunk: usize, frame_max: u32) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec::decode(&mut buf, frame_max) {
                Ok(Some(frame)) => frames.push(format!("{frame:?}")),
                Ok(None) => break,
                Err(e) => return (frames, Some((e.code, e.text))),
            }
        }
    }
    (frames, None)
}

/// A method frame, encoded as the broker encodes its own.
pub fn method_frame(channel: u16, method: &AMQPClass) -> Vec<u8> {
    let mut out = FrameWriter::default();
    out.method(channel, method);
    out.take()
}

/// A content header announcing `body_size` bytes, with `properties`.
pub fn header_frame(channel: u16, body_size: u64, properties: &BasicProperties) -> Vec<u8> {
    let mut out = FrameWriter::default();
    out.content(channel, properties, &[], 131_072);
    let mut bytes = out.take();
    // Bytes 11..19 of the header frame are its body size (after type, channel, size, class, weight).
    bytes[11..19].copy_from_slice(&body_size.to_be_bytes());
    bytes
}

/// A frame of any type around any payload, ended with `end` (0xCE is the only right one).
pub fn raw_frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(end);
    out
}

/// One fuzz input as a client session: bytes a client sends, after the harness's own handshake
/// or (without it) from the first byte on, protocol header included.
#[derive(Debug)]
pub struct Session {
    /// Whether the harness opens the connection first (protocol header, guest login, tune-ok,
    /// `connection.open`), so that `bytes` reach an open connection.
    pub handshake: bool,
    /// What the client sends, as it is.
    pub bytes: Vec<u8>,
}

/// Reply codes a broker may close a connection or a channel with when a client misbehaves:
/// every one but 541 INTERNAL_ERROR (a broker bug) and 320 CONNECTION_FORCED (shutdown only).
/// 540 NOT_IMPLEMENTED answers an unknown class or method id.
const CLIENT_FAULT_CODES: [u16; 11] = [403, 404, 405, 406, 501, 502, 503, 504, 505, 530, 540];
/// How long one session may take before the broker counts as hung. Generous: sessions take
/// milliseconds, but the machine may be shared.
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
/// Past these the harness starts a fresh broker, so that queues and messages left by earlier
/// inputs do not grow without bound over a long run.
const MAX_QUEUES: usize = 256;
const MAX_HELD_BYTES: u64 = 64 * 1024 * 1024;

/// A broker in this process, on a loopback port, driven one [`Session`] at a time. Any failure
/// panics, which libFuzzer reports as a crash with the input that caused it; a panic in one of
/// the broker's tasks aborts the process the same way (libfuzzer-sys's panic hook).
#[derive(Debug)]
pub struct SessionHarness {
    runtime: Runtime,
    broker: Option<Broker>,
    addr: SocketAddr,
}

impl SessionHarness {
    /// Starts the broker on a single-threaded runtime (runs are then repeatable), with small
    /// limits so that inputs reach them: 64 KiB messages, 4 consumers per channel.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let broker = runtime.block_on(start_broker());
        let addr = broker.local_addr();
        Self {
            runtime,
            broker: Some(broker),
            addr,
        }
    }

    /// Plays `session` against the broker, then checks that it answered properly and that a
    /// fresh connection is still served. Panics otherwise.
    pub fn run(&mut self, session: &Session) {
        let addr = self.addr;
        self.runtime.block_on(async {
            let played = tokio::time::timeout(SESSION_TIMEOUT, play(addr, session)).await;
            let answer = played.unwrap_or_else(|_| {
                panic!("the broker did not close the session within {SESSION_TIMEOUT:?}")
            });
            check_answer(&answer);
            tokio::time::timeout(SESSION_TIMEOUT, probe(addr))
                .await
                .unwrap_or_else(|_| panic!("the probe connection hung"));
        });
        self.restart_if_full();
    }

    fn restart_if_full(&mut self) {
        let broker = self.broker.as_ref().expect("a running broker");
        if broker.queue_count() <= MAX_QUEUES && broker.memory_used_bytes() <= MAX_HELD_BYTES {
            return;
        }
        let broker = self.broker.take().expect("a running broker");
        self.runtime.block_on(async {
            broker.shutdown().await.expect("broker shutdown");
            let fresh = start_broker().await;
            self.addr = fresh.local_addr();
            self.broker = Some(fresh);
        });
    }
}

async fn start_broker() -> Broker {
    Broker::builder()
        .port(0)
        .max_message_bytes(64 * 1024)
        .max_consumers_per_channel(4)
        .start()
        .await
        .expect("start the broker")
}

/// What the broker wrote in one session.
struct Answer {
    bytes: Vec<u8>,
    /// The broker closed the socket in order (not reset: a reset may lose bytes in flight).
    clean_end: bool,
}

/// Sends the session, then `connection.close` and the end of the stream; returns every byte the
/// broker wrote until it closed the socket.
async fn play(addr: SocketAddr, session: &Session) -> Answer {
    let mut socket = TcpStream::connect(addr)
        .await
        .expect("connect to the broker");
    let _ = socket.set_nodelay(true);
    if session.handshake {
        open(&mut socket).await;
    }
    // The broker may close first: then writes fail, and what it answered tells why.
    let _ = socket.write_all(&session.bytes).await;
    let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "fuzz session over".into(),
        class_id: 0,
        method_id: 0,
    }));
    let _ = socket.write_all(&method_frame(0, &close)).await;
    let _ = socket.shutdown().await;
    let mut bytes = Vec::new();
    let clean_end = socket.read_to_end(&mut bytes).await.is_ok();
    Answer { bytes, clean_end }
}

/// Checks what the broker wrote: well-formed frames (after its protocol header, if it refused
/// ours), and every `close` with a code that blames the client, never an internal error.
fn check_answer(answer: &Answer) {
    let bytes = &answer.bytes[..];
    let mut buf = BytesMut::from(bytes.strip_prefix(PROTOCOL_HEADER).unwrap_or(bytes));
    loop {
        match codec::decode(&mut buf, 0) {
            Ok(Some(Frame::Method(_, method))) => {
                let code = match &method {
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)) => c.reply_code,
                    AMQPClass::Channel(channel::AMQPMethod::Close(c)) => c.reply_code,
                    _ => continue,
                };
                assert!(
                    CLIENT_FAULT_CODES.contains(&code),
                    "the broker closed with {method:?}"
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("the broker wrote a frame that does not decode: {}", e.text),
        }
    }
    assert!(
        buf.is_empty() || !answer.clean_end,
        "the broker's last frame is cut short"
    );
}

/// Opens a connection as guest, opens channel 1, closes both: the broker still serves.
async fn probe(addr: SocketAddr) {
    let mut socket = TcpStream::connect(addr).await.expect("connect the probe");
    let _ = socket.set_nodelay(true);
    let mut buf = open(&mut socket).await;
    let open_channel = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    socket
        .write_all(&method_frame(1, &open_channel))
        .await
        .expect("probe: send channel.open");
    match read_frame(&mut socket, &mut buf).await {
        Frame::Method(1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) => {}
        other => panic!("probe: expected channel.open-ok, got {other:?}"),
    }
    let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "probe done".into(),
        class_id: 0,
        method_id: 0,
    }));
    socket
        .write_all(&method_frame(0, &close))
        .await
        .expect("probe: send connection.close");
    match read_frame(&mut socket, &mut buf).await {
        Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("probe: expected connection.close-ok, got {other:?}"),
    }
}

/// The client's half of the handshake (guest/guest, the broker's tune values, no heartbeats);
/// returns the bytes read past `open-ok`.
async fn open(socket: &mut TcpStream) -> BytesMut {
    let mut buf = BytesMut::new();
    socket
        .write_all(PROTOCOL_HEADER)
        .await
        .expect("send the protocol header");
    match read_frame(socket, &mut buf).await {
        Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => {}
        other => panic!("expected connection.start, got {other:?}"),
    }
    let start_ok = AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response: LongString::from(&b"\0guest\0guest"[..]),
        locale: "en_US".into(),
    }));
    send(socket, &start_ok).await;
    let tune = match read_frame(socket, &mut buf).await {
        Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => tune,
        other => panic!("expected connection.tune, got {other:?}"),
    };
    let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: 0,
    }));
    send(socket, &tune_ok).await;
    let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
        virtual_host: "/".into(),
    }));
    send(socket, &open).await;
    match read_frame(socket, &mut buf).await {
        Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
        other => panic!("expected connection.open-ok, got {other:?}"),
    }
    buf
}

async fn send(socket: &mut TcpStream, method: &AMQPClass) {
    socket
        .write_all(&method_frame(0, method))
        .await
        .expect("send a handshake frame");
}

/// The next frame from the broker; panics on the end of the stream or a frame that does not
/// decode.
async fn read_frame(socket: &mut TcpStream, buf: &mut BytesMut) -> Frame {
    loop {
        match codec::decode(buf, 0) {
            Ok(Some(frame)) => return frame,
            Ok(None) => {}
            Err(e) => panic!("the broker wrote a frame that does not decode: {}", e.text),
        }
        let n = socket.read_buf(buf).await.expect("read from the broker");
        assert!(n > 0, "the broker closed a well-formed connection");
    }
}
