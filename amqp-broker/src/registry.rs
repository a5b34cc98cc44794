//! The connections a broker is serving: listed for operators and tests, and closable one by one
//! (what `rabbitmqctl list_connections` and `close_connection` do).
//!
//! Besides [`ConnectionInfo`], each entry keeps what the management API shows of a connection
//! (its details and its channels). Channels publish a [`ChannelView`] of themselves when they
//! open and update it only on `basic.qos`, `confirm.select` and `tx.select`, so the hot path never touches
//! the registry.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::message::Credit;

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

/// What the management API shows of a connection beyond [`ConnectionInfo`].
#[derive(Clone, Debug)]
pub(crate) struct ConnectionDetails {
    /// The broker's end of the socket.
    pub local: Option<SocketAddr>,
    /// The vhost it opened.
    pub vhost: String,
    /// The client properties from `connection.start-ok`.
    pub client_properties: FieldTable,
    /// When the handshake completed.
    pub connected_at: SystemTime,
    /// Negotiated `frame_max` and `channel_max`.
    pub frame_max: u32,
    pub channel_max: u16,
}

/// One open channel, as the management API shows it. The channel owns it (the registry keeps
/// a weak reference, so a closed channel drops out of the listing by itself).
#[derive(Debug)]
pub(crate) struct ChannelView {
    /// The channel number.
    pub number: u16,
    /// The channel-wide prefetch window (`basic.qos` with `global = true`); its count of
    /// deliveries taken is the channel's unacknowledged consumer deliveries.
    pub credit: Arc<Credit>,
    /// The prefetch given to consumers created from now on (`basic.qos`, `global = false`).
    pub consumer_prefetch: AtomicU16,
    /// In confirm mode.
    pub confirm: AtomicBool,
    /// In tx mode.
    pub transactional: AtomicBool,
}

impl ChannelView {
    pub fn new(number: u16, credit: Arc<Credit>) -> Arc<Self> {
        Arc::new(Self {
            number,
            credit,
            consumer_prefetch: AtomicU16::new(0),
            confirm: AtomicBool::new(false),
            transactional: AtomicBool::new(false),
        })
    }

    /// Records `basic.qos` with `global = false`.
    pub fn set_consumer_prefetch(&self, count: u16) {
        self.consumer_prefetch.store(count, Ordering::Relaxed);
    }

    /// Records `confirm.select`.
    pub fn set_confirm(&self) {
        self.confirm.store(true, Ordering::Relaxed);
    }

    /// Records `tx.select`.
    pub fn set_transactional(&self) {
        self.transactional.store(true, Ordering::Relaxed);
    }
}

/// A connection's open channels, by number.
#[derive(Debug, Default)]
pub(crate) struct ChannelViews {
    channels: Mutex<BTreeMap<u16, Weak<ChannelView>>>,
}

impl ChannelViews {
    /// Lists a channel that just opened (replacing a closed one with the same number).
    pub fn opened(&self, view: &Arc<ChannelView>) {
        let mut channels = self.channels.lock();
        channels.retain(|_, v| v.strong_count() > 0);
        channels.insert(view.number, Arc::downgrade(view));
    }

    /// The channels open now, by number.
    pub fn open(&self) -> Vec<Arc<ChannelView>> {
        self.channels
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// A request to close a connection, with the reason the client is told.
#[derive(Debug, Default)]
pub(crate) struct CloseRequest {
    notify: Notify,
    reason: Mutex<Option<String>>,
}

impl CloseRequest {
    /// The reason RabbitMQ's management plugin gives when none is set.
    pub const DEFAULT_REASON: &'static str = "Closed via management plugin";

    fn request(&self, reason: Option<&str>) {
        *self.reason.lock() = reason.map(str::to_owned);
        // notify_one stores a permit, so a connection busy elsewhere still sees it.
        self.notify.notify_one();
    }

    /// Waits for a request; returns its reason.
    pub async fn requested(&self) -> String {
        self.notify.notified().await;
        self.reason
            .lock()
            .take()
            .unwrap_or_else(|| Self::DEFAULT_REASON.to_owned())
    }
}

/// A connection as the management API lists it.
#[derive(Debug)]
pub(crate) struct ConnectionSnapshot {
    pub info: ConnectionInfo,
    pub details: ConnectionDetails,
    pub channels: Vec<Arc<ChannelView>>,
}

/// Open connections, each with a way to ask it to close.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    info: ConnectionInfo,
    details: ConnectionDetails,
    channels: Arc<ChannelViews>,
    close: Arc<CloseRequest>,
}

/// Keeps a connection listed while it lives.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    id: u64,
    /// Asked for when someone wants this connection closed.
    pub close: Arc<CloseRequest>,
    /// Where the connection lists its channels.
    pub channels: Arc<ChannelViews>,
}

impl Registry {
    pub fn register(
        self: &Arc<Self>,
        info: ConnectionInfo,
        details: ConnectionDetails,
    ) -> Registration {
        let close = Arc::new(CloseRequest::default());
        let channels = Arc::new(ChannelViews::default());
        let id = info.id;
        self.conns.lock().insert(
            id,
            Entry {
                info,
                details,
                channels: channels.clone(),
                close: close.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            id,
            close,
            channels,
        }
    }

    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut all: Vec<_> = self.conns.lock().values().map(|e| e.info.clone()).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Every connection with its details and open channels, by id.
    pub fn snapshot(&self) -> Vec<ConnectionSnapshot> {
        let mut all: Vec<_> = self
            .conns
            .lock()
            .values()
            .map(|e| ConnectionSnapshot {
                info: e.info.clone(),
                details: e.details.clone(),
                channels: e.channels.open(),
            })
            .collect();
        all.sort_by_key(|c| c.info.id);
        all
    }

    /// Asks every connection matching `pred` to close; returns how many.
    pub fn close_where(&self, pred: impl Fn(&ConnectionInfo) -> bool) -> usize {
        self.close_with_reason(pred, None)
    }

    /// Asks every connection matching `pred` to close, telling it `reason` (default:
    /// [`CloseRequest::DEFAULT_REASON`]); returns how many.
    pub fn close_with_reason(
        &self,
        pred: impl Fn(&ConnectionInfo) -> bool,
        reason: Option<&str>,
    ) -> usize {
        let conns = self.conns.lock();
        let matching: Vec<_> = conns.values().filter(|e| pred(&e.info)).collect();
        for e in &matching {
            e.close.request(reason);
        }
        matching.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.conns.lock().remove(&self.id);
    }
}
