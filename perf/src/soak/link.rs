//! A lapin connection that the soak can cut abruptly: it goes through a one-connection TCP
//! relay in this process, and cutting drops both relay sockets at once. The broker sees the
//! socket close with no `connection.close` first, as when a client process dies.

use std::net::SocketAddr;

use anyhow::Context as _;
use lapin::{Connection, ConnectionProperties};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The frame size the soak's connections ask for: lapin keeps buffers of 64 frames per
/// connection, so 500 connections at 128 KiB would hold 4 GiB in this tool. Messages are small.
const FRAME_MAX: u32 = 8192;

/// Cuts one relayed connection.
#[derive(Debug)]
pub struct Cut(AbortHandle);

impl Cut {
    /// Drops both sockets of the relay (no AMQP close on either side).
    pub fn cut(&self) {
        self.0.abort();
    }
}

/// Opens a lapin connection to `broker` through a relay, named `name` in the broker's list.
pub async fn connect(broker: SocketAddr, name: &str) -> anyhow::Result<(Connection, Cut)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let relay_addr = listener.local_addr()?;
    let relay = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await?;
        drop(listener);
        let mut upstream = TcpStream::connect(broker).await?;
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        anyhow::Ok(())
    });
    let cut = Cut(relay.abort_handle());
    let uri = format!("amqp://guest:guest@{relay_addr}/%2f?frame_max={FRAME_MAX}&heartbeat=10");
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match Connection::connect(&uri, properties).await {
        Ok(connection) => Ok((connection, cut)),
        Err(e) => {
            cut.cut();
            Err(e).with_context(|| format!("{name}: cannot connect through the relay"))
        }
    }
}
