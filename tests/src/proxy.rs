//! A TCP proxy between a client and a broker that a test can cut, freeze and restore: the same
//! network faults against the bundled broker and against RabbitMQ.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways.
    Forward,
    /// Hold bytes (both ways) without closing anything: a stalled network.
    Frozen,
    /// Close every connection and refuse new ones: the broker is gone.
    Down,
}

/// A running proxy to one broker address.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    pumps: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1, port 0, to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let pumps: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let target = target.to_owned();
        let all = pumps.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *mode_rx.borrow() == Mode::Down {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = tokio::spawn(pump(cr, sw, mode_rx.clone()));
                let down = tokio::spawn(pump(sr, cw, mode_rx.clone()));
                all.lock().extend([up.abort_handle(), down.abort_handle()]);
            }
        })
        .abort_handle();
        Self {
            addr,
            mode,
            pumps,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Passes traffic again (after [`freeze`](Self::freeze) or [`down`](Self::down)).
    pub fn forward(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Stops passing bytes, keeping the connections open.
    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }

    /// Cuts every connection (the client sees its socket reset or closed) and refuses new ones
    /// until [`forward`](Self::forward).
    pub fn down(&self) {
        self.mode.send_replace(Mode::Down);
        self.cut();
    }

    /// Cuts every current connection; new ones are still accepted.
    pub fn cut(&self) {
        for pump in self.pumps.lock().drain(..) {
            pump.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if mode.wait_for(|m| *m == Mode::Forward).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read while frozen are held until traffic flows again.
        if mode.wait_for(|m| *m == Mode::Forward).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
