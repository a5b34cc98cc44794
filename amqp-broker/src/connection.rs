//! One task per TCP connection: the handshake, then frames in, channel demultiplexing, deliveries
//! out, heartbeats, and an orderly close with the right reply code when anything goes wrong.
//!
//! Reading and state live in this task; writing happens in a small companion task fed with whole
//! batches, so a client that stops reading can never stop the broker from reading what it sends
//! (and acting on its acks).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::access::{Access, Grant};
use crate::broker::Signal;
use crate::channel::{Channel, ConnIo};
use crate::codec::{self, Frame, FrameWriter, PROTOCOL_HEADER, short};
use crate::config::Config;
use crate::error::AmqpError;
use crate::id_hash::ChannelMap;
use crate::memory::BLOCKED_REASON;
use crate::queue::{ConnId, Outbound, Outbox};
use crate::registry::{ChannelViews, CloseRequest, ConnectionDetails, ConnectionInfo, Registry};
use crate::vhost::Vhost;

/// Everything a connection needs from the broker.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: Arc<Config>,
    /// Users, vhosts and permissions: the handshake picks the connection's vhost here.
    pub access: Arc<Access>,
    pub registry: Arc<Registry>,
    pub signal: watch::Receiver<Signal>,
}

/// How long a client has to complete the handshake, as RabbitMQ's default.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker waits for `close-ok` after sending `connection.close`.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// How many queued deliveries are written per batch before reading the socket again.
const OUTBOUND_BATCH: usize = 256;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one plain TCP client until it leaves, misbehaves, or the broker shuts down.
pub(crate) async fn serve(socket: TcpStream, peer: SocketAddr, ctx: Context) {
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().ok();
    // Owned halves: no lock between the reading task and the writer.
    let (rd, wr) = socket.into_split();
    serve_halves(rd, wr, peer, local, ctx).await;
}

/// Serves one client over TLS (see [`crate::tls`]), once its TLS handshake is done.
pub(crate) async fn serve_tls(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    ctx: Context,
) {
    // A TLS session cannot be split into owned halves; `split` shares it behind a lock that
    // each read or write holds only while it polls.
    let local = stream.get_ref().0.local_addr().ok();
    let (rd, wr) = tokio::io::split(stream);
    serve_halves(rd, wr, peer, local, ctx).await;
}

/// The connection over any byte stream: reading and state here, writing in a companion task.
async fn serve_halves<R, W>(rd: R, wr: W, peer: SocketAddr, local: Option<SocketAddr>, ctx: Context)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (write_tx, write_rx) = mpsc::unbounded_channel();
    let (mut out, recycler) = FrameWriter::recycling();
    let writer = tokio::spawn(write_loop(wr, write_rx, recycler));
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(8192),
    };
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut reader, &mut out, &write_tx, &ctx, peer),
    )
    .await;
    flush(&mut out, &write_tx);
    match handshake {
        Ok(Ok(Some(tuned))) => {
            let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, id, name = ?tuned.name, "connection open");
            let info = ConnectionInfo {
                id,
                name: tuned.name.clone(),
                peer,
                user: tuned.user.clone(),
                vhost: tuned.vhost.name.clone(),
                heartbeat_secs: tuned.heartbeat_secs,
            };
            let details = ConnectionDetails {
                local,
                vhost: tuned.vhost.name.clone(),
                client_properties: tuned.client_properties.clone(),
                connected_at: std::time::SystemTime::now(),
                frame_max: tuned.frame_max,
                channel_max: tuned.channel_max,
            };
            let registration = ctx.registry.register(info, details);
            let _open = tuned.vhost.metrics.connection_opened();
            let (outbox, mut inbox) = mpsc::unbounded_channel();
            let alarm = ctx.access.memory.subscribe();
            let mut conn = Conn {
                id,
                alarm,
                publisher: false,
                blocked_sent: false,
                ctx,
                tuned,
                out,
                outbox,
                channels: ChannelMap::default(),
                closing_channels: HashSet::new(),
                closing: None,
                write_tx: write_tx.clone(),
                channel_views: registration.channels.clone(),
            };
            conn.run(&mut reader, &mut inbox, &registration.close).await;
            conn.release_all();
            // Deliveries queued for this connection that it never wrote go back to their
            // queues (with the channels gone, `outbound` returns them): dropping them with the
            // inbox would lose them, confirmed persistent messages included.
            inbox.close();
            while let Ok(undelivered) = inbox.try_recv() {
                conn.outbound(undelivered);
            }
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            // Answered already (close frame or protocol header); wait briefly for close-ok.
            tracing::debug!(%peer, "handshake refused: {}", e.text);
            let _ = tokio::time::timeout(
                CLOSE_OK_TIMEOUT,
                reader.wait_close_ok(ctx.config.frame_max_bytes),
            )
            .await;
        }
        Err(_) => tracing::debug!(%peer, "handshake timed out"),
    }
    drop(write_tx);
    // Let the writer finish the last batch (close or close-ok), then the socket closes.
    // A peer that vanished (a half-open connection) leaves the writer blocked on a full socket
    // until TCP gives up, many minutes later: past the grace period it is aborted, which closes
    // the socket now.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    recycler: codec::Recycler,
) {
    while let Some(batch) = rx.recv().await {
        // A TLS stream may keep the tail of a batch in its buffer when the socket is full, until
        // flushed; on a plain socket flushing is a no-op.
        if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        recycler.give_back(batch);
    }
    let _ = wr.shutdown().await;
}

fn flush(out: &mut FrameWriter, write_tx: &mpsc::UnboundedSender<Vec<u8>>) {
    if !out.is_empty() {
        let _ = write_tx.send(out.take());
    }
}

/// The read half with its buffer.
struct Reader<R> {
    rd: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// The next frame; `Ok(None)` at a clean end of stream.
    async fn frame(&mut self, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
        loop {
            if let Some(frame) = codec::decode(&mut self.buf, frame_max)? {
                return Ok(Some(frame));
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Reads and discards until the client closes its side.
    async fn drain(&mut self) {
        loop {
            self.buf.clear();
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Reads until `connection.close-ok` (or anything that ends the conversation).
    async fn wait_close_ok(&mut self, frame_max: u32) {
        while let Ok(Some(frame)) = self.frame(frame_max).await {
            if matches!(
                frame,
                Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
            ) {
                return;
            }
        }
    }
}

/// What the handshake settled.
#[derive(Debug)]
struct Tuned {
    frame_max: u32,
    channel_max: u16,
    heartbeat_secs: u16,
    /// The client wants `basic.cancel` when a queue it consumes from is deleted.
    cancel_notify: bool,
    /// The client wants `connection.blocked` / `unblocked` (flow control).
    blocked_notify: bool,
    /// The user who logged in (a published `user_id` must match it).
    user: String,
    /// The client's `connection_name`, if it gave one.
    name: Option<String>,
    /// Everything the client said about itself (shown by the management API).
    client_properties: FieldTable,
    /// The vhost the client opened.
    vhost: Arc<Vhost>,
    /// What the user may do there.
    grant: Grant,
}

/// Protocol header, start/start-ok (authentication), tune/tune-ok, open/open-ok.
/// `Ok(None)`: the client went away, or is to be hung up on (a wrong header, already answered;
/// failed authentication from a client that cannot take a close). `Err`: `connection.close` was
/// written, and the client's close-ok is worth waiting for.
async fn handshake(
    reader: &mut Reader<impl AsyncRead + Unpin>,
    out: &mut FrameWriter,
    write_tx: &mpsc::UnboundedSender<Vec<u8>>,
    ctx: &Context,
    peer: SocketAddr,
) -> Result<Option<Tuned>, AmqpError> {
    let config = &*ctx.config;
    // The protocol header: answer anything else with ours and hang up, as the spec says.
    while reader.buf.len() < PROTOCOL_HEADER.len() {
        let n = reader.buf.len();
        if reader.buf[..] != PROTOCOL_HEADER[..n] {
            break;
        }
        match reader.rd.read_buf(&mut reader.buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
    if reader.buf.len() < 8 || reader.buf[..8] != PROTOCOL_HEADER[..] {
        out.raw(PROTOCOL_HEADER);
        return Ok(None);
    }
    let _ = reader.buf.split_to(8);

    out.method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
    );
    flush(out, write_tx);

    // Until tune-ok, RabbitMQ answers anything unexpected by hanging up (the client has not
    // agreed to the connection yet); so does this broker.
    let Some(Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)))) =
        next_frame(reader, config.frame_max_bytes).await
    else {
        return hang_up("expected connection.start-ok");
    };
    let caps = capabilities(&start_ok.client_properties);
    let credentials = match start_ok.mechanism.as_str() {
        "PLAIN" => parse_plain(start_ok.response.as_bytes()),
        "AMQPLAIN" => parse_amqplain(start_ok.response.as_bytes()),
        _ => return hang_up("unknown authentication mechanism"),
    };
    let user = match credentials {
        Some((user, pass)) if ctx.access.authenticate(&user, &pass).is_some() => {
            if ctx.access.is_loopback_only(&user) && !peer.ip().to_canonical().is_loopback() {
                // RabbitMQ refuses it as a failed login, with the reason in its log only.
                tracing::info!(%peer, "user '{user}' can only connect via localhost");
                String::new()
            } else {
                user
            }
        }
        _ => String::new(),
    };
    if user.is_empty() {
        let e = AmqpError::access_refused(format_args!(
            "Login was refused using authentication mechanism {}. For details see the broker logfile.",
            start_ok.mechanism
        ));
        tracing::info!("{}", e.text);
        if caps.contains("authentication_failure_close") {
            return Err(close_with(out, e));
        }
        // Without the capability the spec's answer is to close the socket.
        return Ok(None);
    }

    out.method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max_bytes,
            heartbeat: config.heartbeat_secs,
        })),
    );
    flush(out, write_tx);

    let Some(Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)))) =
        next_frame(reader, config.frame_max_bytes).await
    else {
        return hang_up("expected connection.tune-ok");
    };
    // The client may lower the limits, not raise them, and 0 ("no limit") exceeds any limit.
    let frame_max_ok = (4096..=config.frame_max_bytes).contains(&tune_ok.frame_max);
    let channel_max_ok = (1..=config.channel_max).contains(&tune_ok.channel_max);
    if !frame_max_ok || !channel_max_ok {
        return hang_up("tune-ok outside the offered limits");
    }
    let open = match next_frame(reader, tune_ok.frame_max).await {
        None => return Ok(None),
        Some(Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))) => open,
        Some(other) => {
            let e = AmqpError::unexpected_frame(format_args!(
                "expected connection.open, got {}",
                describe(&other)
            ));
            return Err(close_with(out, e));
        }
    };
    let vhost_name = open.virtual_host.as_str();
    let Some(vhost) = ctx.access.vhost(vhost_name) else {
        let e = AmqpError::not_allowed(format_args!("vhost {vhost_name} not found"));
        return Err(close_with(out, e.on(10, 40)));
    };
    if ctx.access.permission(vhost_name, &user).is_none() {
        let e = AmqpError::not_allowed(format_args!(
            "access to vhost '{vhost_name}' refused for user '{user}'"
        ));
        return Err(close_with(out, e.on(10, 40)));
    }
    let grant = Grant::new(ctx.access.clone(), vhost_name, &user);
    let tuned = Tuned {
        frame_max: tune_ok.frame_max,
        channel_max: tune_ok.channel_max,
        heartbeat_secs: tune_ok.heartbeat,
        cancel_notify: caps.contains("consumer_cancel_notify"),
        blocked_notify: caps.contains("connection.blocked"),
        user,
        name: match start_ok.client_properties.inner().get("connection_name") {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
            _ => None,
        },
        client_properties: start_ok.client_properties.clone(),
        vhost,
        grant,
    };
    out.method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    );
    Ok(Some(tuned))
}

/// Ends a handshake without a word, as RabbitMQ does before the connection is tuned.
fn hang_up(why: &str) -> Result<Option<Tuned>, AmqpError> {
    tracing::debug!("handshake abandoned: {why}");
    Ok(None)
}

/// The next frame during the handshake, heartbeats skipped; `None` at the end of the stream or
/// on bytes that do not decode.
async fn next_frame(reader: &mut Reader<impl AsyncRead + Unpin>, frame_max: u32) -> Option<Frame> {
    loop {
        match reader.frame(frame_max).await {
            Ok(Some(Frame::Heartbeat(0))) => {}
            Ok(frame) => return frame,
            Err(_) => return None,
        }
    }
}

/// A frame's kind, for error messages.
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Method(ch, m) => format!(
            "method {}/{} on channel {ch}",
            m.get_amqp_class_id(),
            m.get_amqp_method_id()
        ),
        Frame::Header { channel, .. } => format!("a content header on channel {channel}"),
        Frame::Body(ch, _) => format!("a content body on channel {ch}"),
        Frame::Heartbeat(ch) => format!("a heartbeat on channel {ch}"),
    }
}

/// Writes `connection.close` for `e` and returns it.
fn close_with(out: &mut FrameWriter, e: AmqpError) -> AmqpError {
    out.method(0, &close_method(&e));
    e
}

fn close_method(e: &AmqpError) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: e.code,
        reply_text: short(e.text.clone()),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "direct_reply_to",
        "connection.blocked",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("amqp-broker"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert(
        "information".into(),
        text("A lightweight AMQP 0-9-1 broker"),
    );
    props.insert("cluster_name".into(), text("amqp-broker"));
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

/// The capabilities a client announced as true.
fn capabilities(client_properties: &FieldTable) -> HashSet<String> {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t
            .inner()
            .iter()
            .filter(|(_, v)| matches!(v, AMQPValue::Boolean(true)))
            .map(|(k, _)| k.to_string())
            .collect(),
        _ => HashSet::new(),
    }
}

/// PLAIN: `[authzid] NUL user NUL password`.
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let (_authzid, user, pass) = (parts.next()?, parts.next()?, parts.next()?);
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

/// AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut framed = (response.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let field = |k: &str| match table.inner().get(k)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    Some((field("LOGIN")?, field("PASSWORD")?))
}

/// An open connection.
struct Conn {
    id: ConnId,
    ctx: Context,
    tuned: Tuned,
    out: FrameWriter,
    /// Cloned into this connection's consumers; queues deliver through it.
    outbox: Outbox,
    channels: ChannelMap<Channel>,
    /// Channels the broker closed, waiting for the client's `close-ok` (frames on them are
    /// dropped meanwhile).
    closing_channels: HashSet<u16>,
    /// Set once the broker sent `connection.close`: the deadline for the client's `close-ok`.
    closing: Option<Instant>,
    write_tx: mpsc::UnboundedSender<Vec<u8>>,
    /// The memory alarm (see [`crate::memory`]): while it is on, a publishing connection is
    /// not read.
    alarm: watch::Receiver<bool>,
    /// Whether the client ever published: only publishers are blocked, so that consumers can
    /// go on acking and draining the queues.
    publisher: bool,
    /// `connection.blocked` was sent and `unblocked` is owed.
    blocked_sent: bool,
    /// Where its channels list themselves for the management API.
    channel_views: Arc<ChannelViews>,
}

/// Whether the connection goes on after a frame.
enum Next {
    Continue,
    /// Close the socket now (the client answered our close).
    Stop,
    /// We answered the client's close: let it close the socket first, as RabbitMQ does, so
    /// that it reads our close-ok before it sees the end of the stream.
    Linger,
}

/// How long the broker waits for a client to close its socket after close-ok.
const LINGER: Duration = Duration::from_secs(5);

impl Conn {
    async fn run(
        &mut self,
        reader: &mut Reader<impl AsyncRead + Unpin>,
        inbox: &mut mpsc::UnboundedReceiver<Outbound>,
        close_requested: &CloseRequest,
    ) {
        let heartbeat = Duration::from_secs(u64::from(self.tuned.heartbeat_secs));
        // Heartbeats go out twice per interval, as RabbitMQ sends them, so a client never waits a
        // whole interval for one; a client silent for two intervals is dropped.
        let mut ticker = tokio::time::interval(if heartbeat.is_zero() {
            Duration::from_secs(3600)
        } else {
            heartbeat / 2
        });
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last_read = Instant::now();
        let mut signal = self.ctx.signal.clone();
        let seen_signal = *signal.borrow_and_update();
        // Made once, not per loop turn: creating and dropping a `Notified` each time was about 3 %
        // of the broker's instructions under load (callgrind). `notify_one` leaves a permit, so
        // a request made while this connection is busy is still seen.
        let close_requested = close_requested.requested();
        tokio::pin!(close_requested);
        if seen_signal == Signal::Shutdown {
            return;
        }
        loop {
            let blocked = self.flow_control();
            flush(&mut self.out, &self.write_tx);
            let deadline = self
                .closing
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                // While blocked the socket is not read, as RabbitMQ does: the client's writes
                // back up in TCP, and a client that ignores `connection.blocked` (or never asked
                // for it) is held back all the same.
                read = reader.rd.read_buf(&mut reader.buf), if !blocked => {
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => last_read = Instant::now(),
                    }
                    loop {
                        match codec::decode(&mut reader.buf, self.tuned.frame_max) {
                            Ok(Some(frame)) => {
                                match self.frame(frame) {
                                    Next::Continue => {}
                                    Next::Stop => {
                                        flush(&mut self.out, &self.write_tx);
                                        return;
                                    }
                                    Next::Linger => {
                                        flush(&mut self.out, &self.write_tx);
                                        let _ = tokio::time::timeout(LINGER, reader.drain()).await;
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                self.connection_error(e);
                                // Nothing more can be parsed from this stream.
                                reader.buf.clear();
                                break;
                            }
                        }
                    }
                }
                Some(first) = inbox.recv() => {
                    self.outbound(first);
                    for _ in 1..OUTBOUND_BATCH {
                        match inbox.try_recv() {
                            Ok(next) => self.outbound(next),
                            Err(_) => break,
                        }
                    }
                }
                // The alarm changed: the next turn of the loop blocks or resumes. (Its sender
                // lives as long as the vhost, which this connection holds.)
                _ = self.alarm.changed() => {}
                _ = ticker.tick(), if !heartbeat.is_zero() => {
                    if blocked {
                        // Not reading is our doing: the client's heartbeats wait in the socket.
                        last_read = Instant::now();
                    }
                    if last_read.elapsed() > heartbeat * 2 {
                        tracing::info!(conn = self.id, "missed heartbeats from client, timeout: {}s", heartbeat.as_secs());
                        return;
                    }
                    self.out.heartbeat();
                }
                // Once closing, the signal no longer matters (and a dropped sender would wake
                // this branch in a loop).
                changed = signal.changed(), if self.closing.is_none() => {
                    if changed.is_err() || *signal.borrow_and_update() != Signal::Run {
                        self.connection_error(AmqpError::connection_forced(
                            "broker forced connection closure with reason 'shutdown'",
                        ));
                    }
                }
                reason = &mut close_requested, if self.closing.is_none() => {
                    self.connection_error(AmqpError::connection_forced(reason));
                }
                _ = tokio::time::sleep_until(deadline), if self.closing.is_some() => return,
            }
        }
    }

    /// Whether reading is paused for flow control now; tells the client when that changes (if
    /// it asked to be told).
    fn flow_control(&mut self) -> bool {
        if self.closing.is_some() {
            // Only close-ok matters now: read it, and send nothing more.
            return false;
        }
        let blocked = self.publisher && *self.alarm.borrow();
        if blocked != self.blocked_sent && self.tuned.blocked_notify {
            let method = if blocked {
                connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: BLOCKED_REASON.into(),
                })
            } else {
                connection::AMQPMethod::Unblocked(connection::Unblocked {})
            };
            self.out.method(0, &AMQPClass::Connection(method));
            self.blocked_sent = blocked;
        }
        blocked
    }

    /// Sends `connection.close` and stops serving anything but `close-ok`.
    fn connection_error(&mut self, e: AmqpError) {
        if self.closing.is_some() {
            return;
        }
        tracing::debug!(
            conn = self.id,
            code = e.code,
            "closing connection: {}",
            e.text
        );
        self.out.method(0, &close_method(&e));
        self.closing = Some(Instant::now() + CLOSE_OK_TIMEOUT);
        self.release_all();
    }

    fn io(&mut self) -> (ConnIo<'_>, &mut ChannelMap<Channel>, &mut HashSet<u16>) {
        (
            ConnIo {
                conn: self.id,
                vhost: &self.tuned.vhost,
                grant: &self.tuned.grant,
                config: &self.ctx.config,
                out: &mut self.out,
                outbox: &self.outbox,
                frame_max: self.tuned.frame_max,
                user: &self.tuned.user,
                channel_views: &self.channel_views,
            },
            &mut self.channels,
            &mut self.closing_channels,
        )
    }

    fn frame(&mut self, frame: Frame) -> Next {
        if self.closing.is_some() {
            // After connection.close only close-ok (or a crossing close) matters.
            return match frame {
                Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    Next::Stop
                }
                Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    self.out.method(
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    Next::Linger
                }
                _ => Next::Continue,
            };
        }
        let result = match frame {
            Frame::Heartbeat(0) => Ok(Next::Continue),
            Frame::Heartbeat(_) => Err(AmqpError::unexpected_frame(
                "type 8, a heartbeat on a non-zero channel",
            )),
            Frame::Method(0, method) => self.connection_method(method),
            Frame::Method(id, method) => {
                if let AMQPClass::Basic(basic::AMQPMethod::Publish(_)) = method {
                    self.publisher = true;
                }
                self.channel_frame(id, ChannelFrame::Method(method))
            }
            Frame::Header { channel: 0, .. } | Frame::Body(0, _) => {
                Err(AmqpError::unexpected_frame("content frame on channel 0"))
            }
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
            } => self.channel_frame(
                channel,
                ChannelFrame::Header(class_id, body_size, properties),
            ),
            Frame::Body(channel, body) => self.channel_frame(channel, ChannelFrame::Body(body)),
        };
        match result {
            Ok(next) => next,
            Err(e) => {
                self.connection_error(e);
                Next::Continue
            }
        }
    }

    fn connection_method(&mut self, method: AMQPClass) -> Result<Next, AmqpError> {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.release_all();
                self.out.method(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Ok(Next::Linger)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(Next::Stop),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                Err(AmqpError::not_implemented("connection.update-secret").on(class_id, method_id))
            }
            AMQPClass::Connection(_) => Err(AmqpError::unexpected_frame(
                "connection method out of order",
            )
            .on(class_id, method_id)),
            _ => Err(
                AmqpError::channel_error("unexpected method in connection state running")
                    .on(class_id, method_id),
            ),
        }
    }

    fn channel_frame(&mut self, id: u16, frame: ChannelFrame) -> Result<Next, AmqpError> {
        let channel_max = self.tuned.channel_max;
        let (mut io, channels, closing) = self.io();
        if closing.contains(&id) {
            // The broker closed this channel; drop everything until the client's close-ok.
            if let ChannelFrame::Method(AMQPClass::Channel(m)) = &frame {
                match m {
                    channel::AMQPMethod::CloseOk(_) => {
                        closing.remove(&id);
                    }
                    channel::AMQPMethod::Close(_) => {
                        io.out.method(
                            id,
                            &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        );
                    }
                    _ => {}
                }
            }
            return Ok(Next::Continue);
        }
        let Some(ch) = channels.get_mut(&id) else {
            return match frame {
                ChannelFrame::Method(AMQPClass::Channel(channel::AMQPMethod::Open(_))) => {
                    // As in RabbitMQ, channel_max bounds how many channels are open, not their ids.
                    let open = channels.len() + closing.len();
                    if open >= usize::from(channel_max) {
                        return Err(AmqpError::not_allowed(format_args!(
                            "number of channels opened ({open}) has reached the negotiated channel_max ({channel_max})"
                        )));
                    }
                    channels.insert(id, Channel::new(id, io.channel_views));
                    io.vhost.metrics.channels_opened.inc();
                    io.out.method(
                        id,
                        &AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                    );
                    Ok(Next::Continue)
                }
                ChannelFrame::Method(m) => Err(AmqpError::channel_error("expected 'channel.open'")
                    .on(m.get_amqp_class_id(), m.get_amqp_method_id())),
                _ => Err(AmqpError::channel_error("expected 'channel.open'")),
            };
        };
        let (result, ids) = match frame {
            ChannelFrame::Method(AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                let mut ch = channels.remove(&id).expect("looked up above");
                ch.close(&mut io);
                io.out.method(
                    id,
                    &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                return Ok(Next::Continue);
            }
            ChannelFrame::Method(AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
                return Ok(Next::Continue);
            }
            ChannelFrame::Method(m) => {
                let ids = (m.get_amqp_class_id(), m.get_amqp_method_id());
                (ch.method(&mut io, m), Some(ids))
            }
            ChannelFrame::Header(class_id, body_size, properties) => {
                (ch.header(&mut io, class_id, body_size, properties), None)
            }
            ChannelFrame::Body(body) => (ch.body(&mut io, &body), None),
        };
        let Err(mut e) = result else {
            return Ok(Next::Continue);
        };
        if let (0, Some((c, m))) = (e.class_id, ids) {
            e = e.on(c, m);
        }
        if e.is_connection_error() {
            return Err(e);
        }
        let mut ch = channels.remove(&id).expect("looked up above");
        ch.close(&mut io);
        io.out.method(
            id,
            &AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: short(e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        closing.insert(id);
        Ok(Next::Continue)
    }

    /// Work from queues: deliveries and broker-side cancels.
    fn outbound(&mut self, ob: Outbound) {
        let notify = self.tuned.cancel_notify;
        let closing = self.closing.is_some();
        let (mut io, channels, closing_channels) = self.io();
        match ob {
            Outbound::Deliver(d) => match channels.get_mut(&d.consumer.channel) {
                Some(ch) if !closing && ch.has_consumer(&d.consumer) => ch.deliver(&mut io, d),
                _ => {
                    // The consumer went away while the message was on its way: give it back.
                    d.consumer.release();
                    if let Some(q) = d.queue {
                        q.return_undelivered(d.entry, !d.consumer.no_ack);
                    }
                }
            },
            Outbound::Cancel {
                channel,
                consumer_tag,
            } => {
                if let Some(ch) = channels.get_mut(&channel) {
                    ch.cancelled_by_broker(&mut io, consumer_tag, notify);
                }
            }
            Outbound::Confirmed {
                channel,
                epoch,
                delivery_tag,
                ack,
                published_at,
            } => {
                if let Some(ch) = channels.get_mut(&channel) {
                    ch.confirmed(&mut io, epoch, delivery_tag, ack, published_at);
                }
            }
            Outbound::Committed {
                channel: id,
                epoch,
                result,
            } => {
                let Some(ch) = channels.get_mut(&id) else {
                    return;
                };
                if let Err(e) = ch.committed(&mut io, epoch, result) {
                    let mut ch = channels.remove(&id).expect("looked up above");
                    ch.close(&mut io);
                    io.out.method(
                        id,
                        &AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                            reply_code: e.code,
                            reply_text: short(e.text),
                            class_id: e.class_id,
                            method_id: e.method_id,
                        })),
                    );
                    closing_channels.insert(id);
                }
            }
        }
    }

    /// Closes every channel (requeueing their unacked messages) and deletes exclusive queues.
    fn release_all(&mut self) {
        let (mut io, channels, _) = self.io();
        for (_, mut ch) in channels.drain() {
            ch.close(&mut io);
        }
        self.tuned.vhost.delete_exclusive_queues(self.id);
    }
}

/// A frame for one channel.
enum ChannelFrame {
    Method(AMQPClass),
    Header(u16, u64, Box<amq_protocol::protocol::BasicProperties>),
    Body(bytes::Bytes),
}
