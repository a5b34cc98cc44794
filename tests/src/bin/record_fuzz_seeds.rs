//! Records what lapin sends in two short sessions with the bundled broker and writes them as
//! seeds for the `connection` fuzz target (`fuzz/fuzz_targets/connection.rs`).
//!
//! ```text
//! cargo run -p tests --bin record_fuzz_seeds -- fuzz/seeds/connection
//! ```
//!
//! The sessions: publisher confirms (declare, three persistent publishes, consume with a
//! prefetch, ack each delivery, cancel), and a transaction (exchange declare and bind, publish,
//! commit, `basic.get`, nack with requeue, commit, get again, reject, commit). Each is written twice: whole
//! (flags 0: the session's own handshake), and from the first frame after `connection.open`
//! (flags 1: the harness opens the connection). In the target's input format each frame is a
//! raw record: tag 0, a big-endian u16 length, the frame's bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The target's raw-bytes record tag.
const RAW_RECORD: u8 = 0;
/// Frame type of a method frame, and the class and method ids of `connection.open`.
const FRAME_METHOD: u8 = 1;
const CONNECTION_OPEN: [u8; 4] = [0, 10, 0, 40];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: record_fuzz_seeds SEED_DIR")?,
    );
    std::fs::create_dir_all(&dir)?;
    let broker = amqp_broker::Broker::builder().port(0).start().await?;

    let sent = record(broker.local_addr(), |url| async move {
        confirm_session(&url).await
    })
    .await?;
    write_seeds(&dir, "lapin_confirms", &sent)?;
    let sent = record(
        broker.local_addr(),
        |url| async move { tx_session(&url).await },
    )
    .await?;
    write_seeds(&dir, "lapin_tx", &sent)?;

    broker.shutdown().await?;
    Ok(())
}

type SessionResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `session` through a proxy that keeps a copy of every byte the client sends.
async fn record<F, Fut>(
    broker: std::net::SocketAddr,
    session: F,
) -> Result<Vec<u8>, Box<dyn std::error::Error>>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = SessionResult>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("amqp://guest:guest@{}/%2f", listener.local_addr()?);
    let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
    let tap = sent.clone();
    let proxy = tokio::spawn(async move {
        let (client, _) = listener.accept().await?;
        let server = TcpStream::connect(broker).await?;
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut server_rd, mut server_wr) = server.into_split();
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
            let _ = client_wr.shutdown().await;
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tap.lock().extend_from_slice(&buf[..n]);
            server_wr.write_all(&buf[..n]).await?;
        }
        let _ = server_wr.shutdown().await;
        let _ = down.await;
        Ok::<_, std::io::Error>(())
    });
    session(url).await.map_err(|e| e.to_string())?;
    proxy.await??;
    let sent = std::mem::take(&mut *sent.lock());
    Ok(sent)
}

async fn confirm_session(url: &str) -> SessionResult {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(
        "fuzz.a".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    for body in [&b"one"[..], b"two", b"three"] {
        ch.basic_publish(
            "".into(),
            "fuzz.a".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    ch.basic_qos(2, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            "fuzz.a".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..3 {
        let delivery = consumer.next().await.expect("three deliveries")?;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    ch.basic_cancel("c1".into(), BasicCancelOptions::default())
        .await?;
    ch.close(200, "done".into()).await?;
    Ok(conn.close(200, "done".into()).await?)
}

async fn tx_session(url: &str) -> SessionResult {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        "fuzz.x".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        "fuzz.b".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        "fuzz.b".into(),
        "fuzz.x".into(),
        "*.b".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.tx_select().await?;
    ch.basic_publish(
        "fuzz.x".into(),
        "a.b".into(),
        BasicPublishOptions::default(),
        b"in a transaction",
        BasicProperties::default(),
    )
    .await?;
    ch.tx_commit().await?;
    let get = |ch: lapin::Channel| async move {
        let message = ch
            .basic_get("fuzz.b".into(), BasicGetOptions::default())
            .await?;
        message.ok_or_else(|| Box::<dyn std::error::Error>::from("fuzz.b is empty"))
    };
    let first = get(ch.clone()).await?;
    first
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await?;
    // Acks, nacks and rejects in a transaction take effect at the commit.
    ch.tx_commit().await?;
    let again = get(ch.clone()).await?;
    again.reject(BasicRejectOptions::default()).await?;
    ch.tx_commit().await?;
    ch.close(200, "done".into()).await?;
    Ok(conn.close(200, "done".into()).await?)
}

/// Writes `NAME` (the whole session) and `NAME_open` (from the first frame after
/// `connection.open`).
fn write_seeds(dir: &Path, name: &str, sent: &[u8]) -> std::io::Result<()> {
    let (header, frames) = split_frames(sent);
    let whole: Vec<&[u8]> = std::iter::once(header)
        .chain(frames.iter().copied())
        .collect();
    std::fs::write(dir.join(name), seed(0, &whole))?;
    let after_open = frames
        .iter()
        .position(|f| f[0] == FRAME_METHOD && f[7..11] == CONNECTION_OPEN)
        .map_or(&frames[..0], |i| &frames[i + 1..]);
    std::fs::write(dir.join(format!("{name}_open")), seed(1, after_open))?;
    println!("{name}: {} bytes, {} frames", sent.len(), frames.len() + 1);
    Ok(())
}

/// The protocol header, then each frame (type, channel, size, payload, end octet).
fn split_frames(sent: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let (header, mut rest) = sent.split_at(8.min(sent.len()));
    let mut frames = Vec::new();
    while rest.len() >= 7 {
        let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        let (frame, tail) = rest.split_at((size + 8).min(rest.len()));
        frames.push(frame);
        rest = tail;
    }
    (header, frames)
}

fn seed(flags: u8, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![flags];
    for chunk in chunks {
        let len = u16::try_from(chunk.len()).expect("frames of these sessions are small");
        out.push(RAW_RECORD);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
