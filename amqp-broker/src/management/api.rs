//! The overview and the objects: `/api/overview`, ... (RabbitMQ's JSON field names).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{AuthUser, Shared};

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
}

/// `GET /api/overview`: who this is, what it listens on, and object totals.
async fn overview(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let queues: usize = shared.vhosts().iter().map(|v| v.queue_count()).sum();
    Json(json!({
        "product_name": "amqp-broker",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "node": "amqp-broker@localhost",
        "listeners": [
            { "protocol": "amqp", "port": shared.amqp_addr.port(), "ip_address": shared.amqp_addr.ip().to_string() },
        ],
        "object_totals": {
            "connections": shared.registry.list().len(),
            "queues": queues,
        },
    }))
}

/// `GET /api/whoami`: the user the request authenticated as.
async fn whoami(Extension(user): Extension<AuthUser>) -> Json<Value> {
    Json(json!({ "name": user.name }))
}
