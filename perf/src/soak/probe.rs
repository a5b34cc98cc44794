//! The soak's probe: open a connection, open a channel, declare an exclusive server-named
//! queue, close; every 100 ms, timed. It speaks AMQP directly (frames from `amq-protocol`) on a
//! thread and runtime of its own, so that what it measures is the broker's answer, not lapin's
//! per-connection thread start or the load tool's busy runtime.

use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel, connection, queue};
use amq_protocol::types::{FieldTable, LongString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the probe connection is opened.
const EVERY: Duration = Duration::from_millis(100);
/// How long one probe may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts probing `broker` on a thread of its own until `stop`; the thread's result is each
/// round trip's duration (`None` for a failure).
pub fn spawn(
    broker: SocketAddr,
    stop: watch::Receiver<bool>,
) -> std::thread::JoinHandle<Vec<Option<Duration>>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the probe's runtime")
            .block_on(run(broker, stop))
    })
}

async fn run(broker: SocketAddr, mut stop: watch::Receiver<bool>) -> Vec<Option<Duration>> {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut results = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let began = Instant::now();
        let ok = matches!(
            tokio::time::timeout(TIMEOUT, round_trip(broker)).await,
            Ok(Ok(()))
        );
        results.push(ok.then(|| began.elapsed()));
    }
    results
}

/// One probe: handshake as guest, channel.open, queue.declare, connection.close; each answer
/// awaited.
async fn round_trip(broker: SocketAddr) -> anyhow::Result<()> {
    let mut socket = TcpStream::connect(broker).await?;
    socket.set_nodelay(true)?;
    let mut buf = Vec::new();
    socket.write_all(b"AMQP\x00\x00\x09\x01").await?;
    expect(&mut socket, &mut buf, "connection.start", |m| {
        matches!(m, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
    })
    .await?;
    let start_ok = connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response: LongString::from(&b"\0guest\0guest"[..]),
        locale: "en_US".into(),
    };
    send(&mut socket, 0, connection::AMQPMethod::StartOk(start_ok)).await?;
    let tune = match next_method(&mut socket, &mut buf).await? {
        AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
        other => anyhow::bail!("expected connection.tune, got {other:?}"),
    };
    let tune_ok = connection::TuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: 0,
    };
    send(&mut socket, 0, connection::AMQPMethod::TuneOk(tune_ok)).await?;
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    send(&mut socket, 0, connection::AMQPMethod::Open(open)).await?;
    expect(&mut socket, &mut buf, "connection.open-ok", |m| {
        matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
    })
    .await?;
    let open_channel = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    write(&mut socket, 1, open_channel).await?;
    expect(&mut socket, &mut buf, "channel.open-ok", |m| {
        matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
    })
    .await?;
    let declare = queue::Declare {
        queue: "".into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    write(
        &mut socket,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(declare)),
    )
    .await?;
    expect(&mut socket, &mut buf, "queue.declare-ok", |m| {
        matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
    })
    .await?;
    let close = connection::Close {
        reply_code: 200,
        reply_text: "probe".into(),
        class_id: 0,
        method_id: 0,
    };
    send(&mut socket, 0, connection::AMQPMethod::Close(close)).await?;
    expect(&mut socket, &mut buf, "connection.close-ok", |m| {
        matches!(m, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
    })
    .await
}

async fn send(
    socket: &mut TcpStream,
    channel: u16,
    method: connection::AMQPMethod,
) -> anyhow::Result<()> {
    write(socket, channel, AMQPClass::Connection(method)).await
}

async fn write(socket: &mut TcpStream, channel: u16, method: AMQPClass) -> anyhow::Result<()> {
    let frame = AMQPFrame::Method(channel, method);
    let bytes = gen_frame(&frame)(WriteContext::from(Vec::new()))
        .map_err(|e| anyhow::anyhow!("encode {frame:?}: {e:?}"))?
        .into_inner()
        .0;
    socket.write_all(&bytes).await?;
    Ok(())
}

async fn expect(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    what: &str,
    is: impl Fn(&AMQPClass) -> bool,
) -> anyhow::Result<()> {
    let method = next_method(socket, buf).await?;
    anyhow::ensure!(is(&method), "expected {what}, got {method:?}");
    Ok(())
}

/// The next method frame (heartbeats skipped).
async fn next_method(socket: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<AMQPClass> {
    loop {
        match parse_frame(&buf[..]) {
            Ok((rest, frame)) => {
                let used = buf.len() - rest.len();
                buf.drain(..used);
                match frame {
                    AMQPFrame::Method(_, method) => return Ok(method),
                    AMQPFrame::Heartbeat => continue,
                    other => anyhow::bail!("unexpected frame {other:?}"),
                }
            }
            Err(e) if e.is_incomplete() => {}
            Err(e) => anyhow::bail!("unparsable frame from the broker: {e}"),
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the broker closed the probe connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}
