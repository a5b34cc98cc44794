//! The connections a broker is serving: listed for operators and tests, and closable one by one
//! (what `rabbitmqctl list_connections` and `close_connection` do).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A client connection as the broker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The broker's id for it.
    pub id: u64,
    /// The name the client gave (`connection_name` in its client properties).
    pub name: Option<String>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// The heartbeat interval the client agreed to, in seconds (0: none).
    pub heartbeat_secs: u16,
}

/// Open connections, each with a way to ask it to close.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    info: ConnectionInfo,
    close: Arc<Notify>,
}

/// Keeps a connection listed while it lives.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    id: u64,
    /// Notified when someone asks this connection to close.
    pub close: Arc<Notify>,
}

impl Registry {
    pub fn register(self: &Arc<Self>, info: ConnectionInfo) -> Registration {
        let close = Arc::new(Notify::new());
        let id = info.id;
        self.conns.lock().insert(
            id,
            Entry {
                info,
                close: close.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            id,
            close,
        }
    }

    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut all: Vec<_> = self.conns.lock().values().map(|e| e.info.clone()).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Asks every connection matching `pred` to close; returns how many.
    pub fn close_where(&self, pred: impl Fn(&ConnectionInfo) -> bool) -> usize {
        let conns = self.conns.lock();
        let matching: Vec<_> = conns.values().filter(|e| pred(&e.info)).collect();
        for e in &matching {
            // notify_one stores a permit, so a connection busy elsewhere still sees it.
            e.close.notify_one();
        }
        matching.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.conns.lock().remove(&self.id);
    }
}
