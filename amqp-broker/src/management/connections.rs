//! Connections, channels and consumers: `/api/connections[/{name}]` (listing, and `DELETE` to
//! close one with 320 CONNECTION_FORCED), `/api/channels`, `/api/consumers[/{vhost}]`.
//!
//! Channels and consumers are read from what already exists: the registry's channel views
//! and the queues' consumer lists, so serving these costs the AMQP side nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, AuthUser, NODE, Shared, json, not_found};
use crate::queue::Consumer;
use crate::registry::{ChannelView, ConnectionSnapshot};

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/connections", get(list_connections))
        .route(
            "/api/connections/{name}",
            get(show_connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/channels", get(list_channels))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// A connection's name as RabbitMQ forms it: `127.0.0.1:53412 -> 127.0.0.1:5672`.
fn connection_name(c: &ConnectionSnapshot) -> String {
    match c.details.local {
        Some(local) => format!("{} -> {local}", c.info.peer),
        None => c.info.peer.to_string(),
    }
}

fn connection_json(c: &ConnectionSnapshot) -> Value {
    let connected_at = c
        .details
        .connected_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json!({
        "name": connection_name(c),
        "user": c.info.user,
        "vhost": c.details.vhost,
        "peer_host": c.info.peer.ip().to_string(),
        "peer_port": c.info.peer.port(),
        "host": c.details.local.map(|a| a.ip().to_string()),
        "port": c.details.local.map(|a| a.port()),
        "channels": c.channels.len(),
        "client_properties": json::table(&c.details.client_properties),
        "user_provided_name": c.info.name,
        "connected_at": connected_at,
        "timeout": c.info.heartbeat_secs,
        "frame_max": c.details.frame_max,
        "channel_max": c.details.channel_max,
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "state": "running",
        "node": NODE,
    })
}

/// The connections whose vhost `user` may see.
fn visible_connections(shared: &Shared, user: &AuthUser) -> Vec<ConnectionSnapshot> {
    shared
        .registry
        .snapshot()
        .into_iter()
        .filter(|c| shared.may_access(user, &c.details.vhost))
        .collect()
}

/// `GET /api/connections`.
async fn list_connections(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
) -> Json<Vec<Value>> {
    Json(
        visible_connections(&shared, &user)
            .iter()
            .map(connection_json)
            .collect(),
    )
}

fn find_connection(
    shared: &Shared,
    user: &AuthUser,
    name: &str,
) -> Result<ConnectionSnapshot, ApiError> {
    visible_connections(shared, user)
        .into_iter()
        .find(|c| connection_name(c) == name)
        .ok_or_else(not_found)
}

/// `GET /api/connections/{name}`.
async fn show_connection(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(connection_json(&find_connection(
        &shared, &user, &name,
    )?)))
}

/// `DELETE /api/connections/{name}`: closes it with 320 CONNECTION_FORCED and the
/// `X-Reason` header's text (default "Closed via management plugin"), as RabbitMQ; 204.
async fn close_connection(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let c = find_connection(&shared, &user, &name)?;
    let reason = headers.get("x-reason").and_then(|v| v.to_str().ok());
    shared
        .registry
        .close_with_reason(|info| info.id == c.info.id, reason);
    Ok(StatusCode::NO_CONTENT)
}

/// Consumers per (connection id, channel) across the vhosts `user` may see, each with its
/// vhost and queue name.
fn consumers(
    shared: &Shared,
    user: &AuthUser,
    only_vhost: Option<&str>,
) -> Vec<(String, String, Arc<Consumer>)> {
    let mut out = Vec::new();
    for v in shared.vhosts_for(user) {
        if only_vhost.is_some_and(|only| only != v.name) {
            continue;
        }
        for q in v.queues() {
            for c in q.consumers() {
                out.push((v.name.clone(), q.name.to_string(), c));
            }
        }
    }
    out
}

fn channel_json(c: &ConnectionSnapshot, ch: &ChannelView, consumer_count: usize) -> Value {
    let name = connection_name(c);
    json!({
        "name": format!("{name} ({})", ch.number),
        "number": ch.number,
        "connection_details": {
            "name": name,
            "peer_host": c.info.peer.ip().to_string(),
            "peer_port": c.info.peer.port(),
        },
        "user": c.info.user,
        "vhost": c.details.vhost,
        "consumer_count": consumer_count,
        "messages_unacknowledged": ch.credit.used(),
        "prefetch_count": ch.consumer_prefetch.load(Ordering::Relaxed),
        "global_prefetch_count": ch.credit.limit(),
        "confirm": ch.confirm.load(Ordering::Relaxed),
        "transactional": ch.transactional.load(Ordering::Relaxed),
        "state": "running",
        "node": NODE,
    })
}

/// The channels of `connections` in RabbitMQ's shape.
fn channels_json(
    shared: &Shared,
    user: &AuthUser,
    connections: &[ConnectionSnapshot],
) -> Vec<Value> {
    let mut counts: HashMap<(u64, u16), usize> = HashMap::new();
    for (_, _, c) in consumers(shared, user, None) {
        *counts.entry((c.conn, c.channel)).or_default() += 1;
    }
    connections
        .iter()
        .flat_map(|c| {
            c.channels.iter().map(|ch| {
                let n = counts.get(&(c.info.id, ch.number)).copied().unwrap_or(0);
                channel_json(c, ch, n)
            })
        })
        .collect()
}

/// `GET /api/channels`.
async fn list_channels(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
) -> Json<Vec<Value>> {
    let connections = visible_connections(&shared, &user);
    Json(channels_json(&shared, &user, &connections))
}

/// `GET /api/connections/{name}/channels`.
async fn connection_channels(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let c = find_connection(&shared, &user, &name)?;
    Ok(Json(channels_json(&shared, &user, &[c])))
}

fn consumers_json(shared: &Shared, user: &AuthUser, only_vhost: Option<&str>) -> Vec<Value> {
    let connections: HashMap<u64, ConnectionSnapshot> = shared
        .registry
        .snapshot()
        .into_iter()
        .map(|c| (c.info.id, c))
        .collect();
    consumers(shared, user, only_vhost)
        .into_iter()
        .map(|(vhost, queue, c)| {
            let conn = connections.get(&c.conn);
            let conn_name = conn.map(connection_name).unwrap_or_default();
            let arguments = if c.priority == 0 {
                json!({})
            } else {
                json!({ "x-priority": c.priority })
            };
            json!({
                "consumer_tag": c.tag.as_str(),
                "queue": { "name": queue, "vhost": vhost },
                "channel_details": {
                    "name": format!("{conn_name} ({})", c.channel),
                    "number": c.channel,
                    "connection_name": conn_name,
                    "peer_host": conn.map(|c| c.info.peer.ip().to_string()),
                    "peer_port": conn.map(|c| c.info.peer.port()),
                    "user": conn.map(|c| c.info.user.clone()),
                },
                "ack_required": !c.no_ack,
                "exclusive": c.exclusive,
                "prefetch_count": c.credit.limit(),
                "arguments": arguments,
                "active": true,
                "activity_status": "up",
            })
        })
        .collect()
}

/// `GET /api/consumers`.
async fn list_consumers(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
) -> Json<Vec<Value>> {
    Json(consumers_json(&shared, &user, None))
}

/// `GET /api/consumers/{vhost}`.
async fn vhost_consumers(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let v = shared.vhost_for(&user, &vhost)?;
    Ok(Json(consumers_json(&shared, &user, Some(&v.name))))
}
