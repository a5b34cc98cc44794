//! One AMQP connection with one channel, driven by the task that owns it: no I/O thread, no
//! promise per frame. Frames to send are appended to `out` and written together by
//! [`Connection::flush`]; frames received are decoded from one read buffer.

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use amq_protocol::uri::AMQPUri;
use anyhow::Context as _;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::wire::{self, Incoming};

/// The channel every raw connection uses.
pub const CHANNEL: u16 = 1;
/// How long the handshake, and the close at the end, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An open connection with channel [`CHANNEL`] open.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    input: BytesMut,
    /// Frames waiting for [`Connection::flush`].
    pub out: Vec<u8>,
    /// The frame size agreed with the broker (0: no limit).
    pub frame_max: u32,
}

impl Connection {
    /// Connects to `uri` (user, password, vhost and `frame_max` from it), names the connection
    /// `name`, and opens the channel. Heartbeats are turned off: the client is never idle long.
    pub async fn open(uri: &str, name: &str) -> anyhow::Result<Self> {
        let parsed: AMQPUri = uri.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let open = async {
            let address = (parsed.authority.host.as_str(), parsed.authority.port);
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let mut conn = Self {
                stream,
                input: BytesMut::with_capacity(64 * 1024),
                out: Vec::with_capacity(64 * 1024),
                frame_max: 0,
            };
            conn.handshake(&parsed, name).await?;
            anyhow::Ok(conn)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, open)
            .await
            .context("the handshake took more than 15 s")?
            .with_context(|| format!("cannot connect to {}", crate::run::redact(uri)))
    }

    async fn handshake(&mut self, uri: &AMQPUri, name: &str) -> anyhow::Result<()> {
        self.out.extend_from_slice(b"AMQP\x00\x00\x09\x01");
        self.flush().await?;
        let start = self.expect("connection.start", |m| match m {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => Some(start),
            _ => None,
        });
        let start = start.await?;
        if !start
            .mechanisms
            .to_string()
            .split(' ')
            .any(|m| m == "PLAIN")
        {
            anyhow::bail!("the broker does not offer PLAIN authentication");
        }
        // Without this capability a broker drops a consumer whose queue is deleted silently,
        // and the consumer would wait for deliveries that never come.
        let mut capabilities = FieldTable::default();
        capabilities.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
        let mut properties = FieldTable::default();
        properties.insert("product".into(), AMQPValue::LongString("amqp-perf".into()));
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        properties.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        let user = &uri.authority.userinfo;
        let response = format!("\0{}\0{}", user.username, user.password);
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: properties,
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        );
        self.flush().await?;
        let tune = self
            .expect("connection.tune", |m| match m {
                AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => Some(tune),
                _ => None,
            })
            .await?;
        let frame_max = match (uri.query.frame_max, tune.frame_max) {
            (Some(ours), 0) => ours,
            (Some(ours), theirs) => ours.min(theirs),
            (None, theirs) => theirs,
        };
        self.frame_max = frame_max;
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max,
                heartbeat: 0,
            })),
        );
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        );
        self.flush().await?;
        self.expect("connection.open-ok", |m| match m {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Some(()),
            _ => None,
        })
        .await?;
        self.method(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        self.flush().await?;
        self.expect("channel.open-ok", |m| match m {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Some(()),
            _ => None,
        })
        .await
    }

    /// Appends a method frame (written by the next [`Connection::flush`]).
    pub fn method(&mut self, channel: u16, method: AMQPClass) {
        wire::method(&mut self.out, channel, method);
    }

    /// Writes everything appended so far, in one write when the socket takes it.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .await
                .context("writing to the broker")?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next whole frame already read, if any. A `connection.close` or `channel.close` from
    /// the broker is an error carrying its reply code and text.
    pub fn next_frame(&mut self) -> anyhow::Result<Option<Incoming>> {
        let frame = wire::decode(&mut self.input)?;
        if let Some(Incoming::Method(_, method)) = &frame {
            let closed = match &**method {
                AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                    Some(("connection", c.reply_code, c.reply_text.as_str()))
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                    Some(("channel", c.reply_code, c.reply_text.as_str()))
                }
                _ => None,
            };
            if let Some((what, code, text)) = closed {
                anyhow::bail!("the broker closed the {what}: {code} {text}");
            }
        }
        Ok(frame)
    }

    /// Waits for more bytes from the broker (cancel-safe: nothing is lost when the future is
    /// dropped). The end of the stream is an error: the client always closes first.
    pub async fn read(&mut self) -> anyhow::Result<()> {
        let n = self
            .stream
            .read_buf(&mut self.input)
            .await
            .context("reading from the broker")?;
        if n == 0 {
            anyhow::bail!("the broker closed the socket");
        }
        Ok(())
    }

    /// Reads whatever has already arrived, without waiting.
    pub fn read_ready(&mut self) -> anyhow::Result<()> {
        loop {
            match self.stream.try_read_buf(&mut self.input) {
                Ok(0) => anyhow::bail!("the broker closed the socket"),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("reading from the broker"),
            }
        }
    }

    /// Reads frames until a method `pick` accepts arrives (heartbeats skipped); any other frame
    /// is an error naming `what` was expected.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        pick: impl Fn(AMQPClass) -> Option<T>,
    ) -> anyhow::Result<T> {
        loop {
            while let Some(frame) = self.next_frame()? {
                match frame {
                    Incoming::Heartbeat => {}
                    Incoming::Method(_, method) => {
                        let name = format!("{method:?}");
                        return pick(*method).with_context(|| {
                            format!("expected {what} from the broker, got {name}")
                        });
                    }
                    other => anyhow::bail!("expected {what} from the broker, got {other:?}"),
                }
            }
            self.read().await?;
        }
    }

    /// Closes the connection politely: `connection.close`, then waits (a few seconds at most)
    /// for `close-ok`, skipping whatever was still on its way (deliveries, confirms).
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "done".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        self.flush().await?;
        let closed = async {
            loop {
                while let Some(frame) = self.next_frame()? {
                    let close_ok = matches!(
                        &frame,
                        Incoming::Method(0, method)
                            if matches!(**method, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
                    );
                    if close_ok {
                        return anyhow::Ok(());
                    }
                }
                self.read().await?;
            }
        };
        tokio::time::timeout(CLOSE_TIMEOUT, closed)
            .await
            .context("no close-ok from the broker within 5 s")?
    }
}
