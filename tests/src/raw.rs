//! A raw AMQP 0-9-1 client for wire-level tests.
//!
//! [`RawClient`] writes whatever a test asks for — well-formed frames encoded with `amq-protocol`,
//! or deliberately broken bytes — and reads the server's frames one at a time. Every read is
//! bounded by [`WAIT`], so a server that hangs instead of answering fails the test quickly.
//!
//! Helpers that expect something panic with a message naming what arrived instead.

use std::time::Duration;

use amq_protocol::auth::{Credentials, SASLMechanism};
use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How long any single wait for the server may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// The AMQP 0-9-1 protocol header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Frame type octets (AMQP 0-9-1 §4.2.3).
pub const FRAME_METHOD: u8 = 1;
/// Content header frame type.
pub const FRAME_HEADER: u8 = 2;
/// Content body frame type.
pub const FRAME_BODY: u8 = 3;
/// Heartbeat frame type.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;

/// What the server said when it closed a connection or a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The reply code, e.g. 504 for CHANNEL_ERROR.
    pub reply_code: u16,
    /// The human-readable text, e.g. `CHANNEL_ERROR - expected 'channel.open'`.
    pub reply_text: String,
    /// Class id of the method that caused the close (0 when none).
    pub class_id: u16,
    /// Method id of the method that caused the close (0 when none).
    pub method_id: u16,
}

impl CloseReason {
    /// `(reply_code, class_id, method_id)`, for one-line assertions.
    pub fn ids(&self) -> (u16, u16, u16) {
        (self.reply_code, self.class_id, self.method_id)
    }
}

/// What a read from the server produced.
// Boxing the frame would stop tests from matching `Read::Frame(AMQPFrame::Heartbeat)`; the
// value lives for one match, so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    /// A complete frame.
    Frame(AMQPFrame),
    /// The server closed (or reset) the socket.
    Eof,
    /// Nothing arrived within the wait.
    TimedOut,
}

/// Encodes one frame with `amq-protocol`.
pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("frame encodes");
    ctx.into_inner().0
}

/// Builds a frame from its parts by hand, so tests can send what `amq-protocol` would refuse.
pub fn raw_frame(frame_type: u8, channel: u16, payload: &[u8], frame_end: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(frame_type);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .expect("payload fits")
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out.push(frame_end);
    out
}

/// A method frame with any class and method id and the given argument bytes.
pub fn raw_method(channel: u16, class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(args.len() + 4);
    payload.extend_from_slice(&class_id.to_be_bytes());
    payload.extend_from_slice(&method_id.to_be_bytes());
    payload.extend_from_slice(args);
    raw_frame(FRAME_METHOD, channel, &payload, FRAME_END)
}

/// The start-ok response for PLAIN: `\0user\0password`.
pub fn plain_response(user: &str, password: &str) -> LongString {
    Credentials::new(user.into(), password.into()).sasl_auth_string(SASLMechanism::Plain)
}

/// The start-ok response for AMQPLAIN: a field table with LOGIN and PASSWORD, without the
/// table's length prefix.
pub fn amqplain_response(user: &str, password: &str) -> LongString {
    Credentials::new(user.into(), password.into()).sasl_auth_string(SASLMechanism::AMQPlain)
}

/// Client properties for start-ok. With `auth_failure_close` the client advertises the
/// `authentication_failure_close` capability, asking for connection.close on a failed login.
pub fn client_properties(auth_failure_close: bool) -> FieldTable {
    let mut capabilities = FieldTable::default();
    if auth_failure_close {
        capabilities.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString("amqp-rs wire tests".into()),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props
}

/// A TCP connection speaking raw AMQP.
#[derive(Debug)]
pub struct RawClient {
    /// The socket to the server.
    stream: TcpStream,
    /// Bytes read but not yet parsed into a frame.
    buf: Vec<u8>,
}

impl RawClient {
    /// Opens a TCP connection; sends nothing.
    pub async fn connect(addr: &str) -> Self {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and completes the handshake as guest/guest, accepting the server's tune values.
    /// Returns the server's connection.tune.
    pub async fn handshake(addr: &str) -> (Self, connection::Tune) {
        let mut c = Self::connect(addr).await;
        c.start().await;
        c.start_ok("PLAIN", plain_response("guest", "guest"), true)
            .await;
        let tune = c.expect_tune().await;
        c.tune_ok(tune.channel_max, tune.frame_max, tune.heartbeat)
            .await;
        c.open_vhost("/").await;
        (c, tune)
    }

    /// Writes raw bytes. Errors (the server may already have closed) are ignored: the test
    /// then looks at what the server answered.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = timeout(WAIT, self.stream.write_all(bytes)).await;
    }

    /// Writes one frame.
    pub async fn send_frame(&mut self, frame: &AMQPFrame) {
        self.send_bytes(&encode(frame)).await;
    }

    /// Writes one method frame.
    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        self.send_frame(&AMQPFrame::Method(channel, method)).await;
    }

    /// Reads the next frame within `wait`.
    pub async fn read_within(&mut self, wait: Duration) -> Read {
        let deadline = Instant::now() + wait;
        loop {
            match parse_frame(&self.buf[..]) {
                Ok((rest, frame)) => {
                    let used = self.buf.len() - rest.len();
                    self.buf.drain(..used);
                    return Read::Frame(frame);
                }
                Err(e) if e.is_incomplete() => {}
                Err(e) => panic!("server sent an unparsable frame ({e}): {:02x?}", self.buf),
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(
                        self.buf.is_empty(),
                        "server closed mid-frame, leaving {:02x?}",
                        self.buf
                    );
                    return Read::Eof;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads the next frame that is not a heartbeat; panics on EOF or timeout.
    pub async fn recv(&mut self) -> AMQPFrame {
        loop {
            match self.read_within(WAIT).await {
                Read::Frame(AMQPFrame::Heartbeat) => continue,
                Read::Frame(frame) => return frame,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Reads the next non-heartbeat frame and requires it to be a method.
    pub async fn recv_method(&mut self) -> (u16, AMQPClass) {
        match self.recv().await {
            AMQPFrame::Method(channel, method) => (channel, method),
            other => panic!("expected a method frame, got {other:?}"),
        }
    }

    /// Reads raw bytes until the server closes the socket; panics if it does not within
    /// [`WAIT`].
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let res = timeout(WAIT, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(
            res.is_ok(),
            "server did not close the socket; sent so far {out:02x?}"
        );
        out
    }

    /// Requires the server to close the socket (heartbeats before that are allowed).
    pub async fn expect_eof(&mut self) {
        loop {
            match self.read_within(WAIT).await {
                Read::Eof => return,
                Read::Frame(AMQPFrame::Heartbeat) => continue,
                other => panic!("expected the server to close the socket, got {other:?}"),
            }
        }
    }

    /// Requires connection.close from the server, answers connection.close-ok as a client
    /// must, and requires the socket to close. Returns why the server closed.
    pub async fn expect_connection_close(&mut self) -> CloseReason {
        let reason = self.recv_connection_close().await;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        )
        .await;
        self.expect_eof().await;
        reason
    }

    /// Requires connection.close from the server, without answering it.
    pub async fn recv_connection_close(&mut self) -> CloseReason {
        match self.recv_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => CloseReason {
                reply_code: c.reply_code,
                reply_text: c.reply_text.to_string(),
                class_id: c.class_id,
                method_id: c.method_id,
            },
            other => panic!("expected connection.close on channel 0, got {other:?}"),
        }
    }

    /// Requires channel.close on `channel` and answers channel.close-ok.
    pub async fn expect_channel_close(&mut self, channel: u16) -> CloseReason {
        let reason = match self.recv_method().await {
            (ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))) if ch == channel => {
                CloseReason {
                    reply_code: c.reply_code,
                    reply_text: c.reply_text.to_string(),
                    class_id: c.class_id,
                    method_id: c.method_id,
                }
            }
            other => panic!("expected channel.close on channel {channel}, got {other:?}"),
        };
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )
        .await;
        reason
    }

    /// Sends the protocol header and requires connection.start.
    pub async fn start(&mut self) -> connection::Start {
        self.send_bytes(PROTOCOL_HEADER).await;
        match self.recv_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => s,
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    /// Sends connection.start-ok.
    pub async fn start_ok(
        &mut self,
        mechanism: &str,
        response: LongString,
        auth_failure_close: bool,
    ) {
        let start_ok = connection::StartOk {
            client_properties: client_properties(auth_failure_close),
            mechanism: mechanism.into(),
            response,
            locale: "en_US".into(),
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        )
        .await;
    }

    /// Requires connection.tune.
    pub async fn expect_tune(&mut self) -> connection::Tune {
        match self.recv_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    /// Sends connection.tune-ok.
    pub async fn tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        let tune_ok = connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        )
        .await;
    }

    /// Sends connection.open and requires connection.open-ok.
    pub async fn open_vhost(&mut self, vhost: &str) {
        let open = connection::Open {
            virtual_host: vhost.into(),
        };
        self.send_method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
            .await;
        match self.recv_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Sends channel.open on `channel`.
    pub async fn send_channel_open(&mut self, channel: u16) {
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
    }

    /// Opens `channel` and requires channel.open-ok.
    pub async fn open_channel(&mut self, channel: u16) {
        self.send_channel_open(channel).await;
        match self.recv_method().await {
            (ch, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if ch == channel => {}
            other => panic!("expected channel.open-ok on {channel}, got {other:?}"),
        }
    }

    /// Closes `channel` from the client side and requires channel.close-ok.
    pub async fn close_channel(&mut self, channel: u16) {
        let close = channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Close(close)),
        )
        .await;
        match self.recv_method().await {
            (ch, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) if ch == channel => {}
            other => panic!("expected channel.close-ok on {channel}, got {other:?}"),
        }
    }

    /// Sends connection.close (200), requires close-ok, then closes the socket and requires the
    /// server to close its side.
    pub async fn close(&mut self) {
        let close = connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(close)),
        )
        .await;
        match self.recv_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
            other => panic!("expected connection.close-ok, got {other:?}"),
        }
        self.shutdown_and_expect_eof().await;
    }

    /// Closes our half of the socket and reads every frame the server still sends until it
    /// closes its half (heartbeats left out). Panics if a read waits longer than [`WAIT`]: the
    /// server must notice the end of input.
    pub async fn finish_and_read_all(&mut self) -> Vec<AMQPFrame> {
        let _ = timeout(WAIT, self.stream.shutdown()).await;
        let mut frames = Vec::new();
        loop {
            match self.read_within(WAIT).await {
                Read::Eof => return frames,
                Read::Frame(AMQPFrame::Heartbeat) => {}
                Read::Frame(frame) => frames.push(frame),
                Read::TimedOut => panic!(
                    "the server neither answered nor closed within {WAIT:?} of our end of input; \
                     frames so far: {frames:?}"
                ),
            }
        }
    }

    /// Closes our half of the socket, as the peer that received close-ok must, and requires
    /// the server to close its half. (RabbitMQ waits for the client to close the socket after
    /// sending close-ok: up to 30 s, or the heartbeat interval when shorter.)
    pub async fn shutdown_and_expect_eof(&mut self) {
        let _ = timeout(WAIT, self.stream.shutdown()).await;
        self.expect_eof().await;
    }
}

/// Proves the server still serves: a full handshake on a fresh socket, a channel opened and
/// closed, and a clean connection close.
pub async fn assert_serves(addr: &str) {
    let (mut c, _) = RawClient::handshake(addr).await;
    c.open_channel(1).await;
    c.close_channel(1).await;
    c.close().await;
}
