//! The overview and the vhosts: `/api/overview`, `/api/whoami`, `GET /api/vhosts`
//! (RabbitMQ's JSON field names).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{AuthUser, NODE, Shared, list_in_visible_vhosts};
use crate::metrics::QueueStats;
use crate::vhost::Vhost;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/vhosts", list_in_visible_vhosts(vhost_row))
}

/// Ready and unacknowledged messages of a vhost's queues.
#[derive(Default)]
struct Totals {
    ready: u64,
    unacked: u64,
    consumers: u64,
    queues: u64,
}

impl Totals {
    fn of(vhost: &Vhost) -> Self {
        let mut t = Totals::default();
        for q in vhost.queues() {
            let d = q.depth();
            t.ready += d.ready;
            t.unacked += d.unacked;
            t.consumers += d.consumers;
            t.queues += 1;
        }
        t
    }

    fn add(&mut self, other: &Totals) {
        self.ready += other.ready;
        self.unacked += other.unacked;
        self.consumers += other.consumers;
        self.queues += other.queues;
    }
}

/// `GET /api/overview`: who this is, what it listens on, object and message totals (over the
/// vhosts the user may see). Its `message_stats` count messages as the queues saw them (a
/// message routed to two queues is published twice), deleted queues included.
async fn overview(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
) -> Json<Value> {
    let vhosts = shared.vhosts_for(&user);
    let mut totals = Totals::default();
    let mut exchanges = 0;
    let mut stats = QueueStats::default();
    for v in &vhosts {
        totals.add(&Totals::of(v));
        exchanges += v.exchanges().len();
        stats += v.stats();
    }
    // The user's own key: what it may see, and so its totals, differ from another user's.
    let message_stats = shared
        .rates
        .message_stats(&format!("overview:{}", user.name), stats);
    let connections: Vec<_> = shared
        .registry
        .snapshot()
        .into_iter()
        .filter(|c| shared.may_access(&user, &c.details.vhost))
        .collect();
    let channels: usize = connections.iter().map(|c| c.channels.len()).sum();
    Json(json!({
        "product_name": "amqp-broker",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "node": NODE,
        "cluster_name": NODE,
        "listeners": [
            { "node": NODE, "protocol": "amqp", "port": shared.amqp_addr.port(), "ip_address": shared.amqp_addr.ip().to_string() },
            { "node": NODE, "protocol": "http", "port": shared.management_addr.port(), "ip_address": shared.management_addr.ip().to_string() },
        ],
        "object_totals": {
            "connections": connections.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": totals.queues,
            "consumers": totals.consumers,
        },
        "message_stats": message_stats,
        "queue_totals": {
            "messages": totals.ready + totals.unacked,
            "messages_ready": totals.ready,
            "messages_unacknowledged": totals.unacked,
        },
    }))
}

/// `GET /api/whoami`: the user the request authenticated as.
async fn whoami(Extension(user): Extension<AuthUser>) -> Json<Value> {
    Json(json!({ "name": user.name }))
}

/// A vhost's row in `GET /api/vhosts` (the vhosts the user may see), with its message totals.
fn vhost_row(shared: &Shared, v: &Vhost) -> Vec<Value> {
    let t = Totals::of(v);
    vec![json!({
        "name": v.name,
        "description": "",
        "tags": [],
        "tracing": false,
        "messages": t.ready + t.unacked,
        "messages_ready": t.ready,
        "messages_unacknowledged": t.unacked,
        "message_stats": shared.rates.message_stats(&format!("vhost:{}", v.name), v.stats()),
    })]
}
