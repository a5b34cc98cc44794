//! Queues: `/api/queues[/{vhost}[/{name}]]` to list, show, declare (`PUT`) and delete them,
//! `/contents` to purge, `/get` to take messages for debugging, `/bindings` to list theirs.

use std::sync::Arc;

use amq_protocol::types::ShortString;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use super::exchanges::{bindings_to, default_binding_json};
use super::{
    ApiError, AuthUser, NODE, Shared, amqp_error, arguments_field, bad_request, bool_field,
    channel_error, created_or_no_content, json, list_in_vhost, list_in_visible_vhosts, not_found,
    object_body, query_flag, require_keys,
};
use crate::dead_letter::Reason;
use crate::exchange::Destination;
use crate::queue::Queue;
use crate::vhost::{QueueFlags, Vhost};

/// The connection id the API declares and binds as: connection ids start at 1, so no
/// client's exclusive queue belongs to it.
pub(super) const OPERATOR: crate::queue::ConnId = 0;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/queues", list_in_visible_vhosts(vhost_queues))
        .route("/api/queues/{vhost}", list_in_vhost(vhost_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(show).put(declare).delete(delete),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge),
        )
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
}

/// A queue in RabbitMQ's JSON shape.
fn queue_json(shared: &Shared, vhost: &str, q: &Queue) -> Value {
    let d = q.depth();
    let key = format!("queue:{vhost}:{}", q.name);
    json!({
        "message_stats": shared.rates.message_stats(&key, q.stats()),
        "name": q.name.as_str(),
        "vhost": vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": json::table(&q.arguments),
        "messages": d.ready + d.unacked,
        "messages_ready": d.ready,
        "messages_unacknowledged": d.unacked,
        "message_bytes_ready": d.ready_bytes,
        "message_bytes_unacknowledged": d.unacked_bytes,
        "consumers": d.consumers,
        "state": "running",
        "type": if q.policy.quorum { "quorum" } else { "classic" },
        "node": NODE,
    })
}

/// A vhost's queues, as `GET /api/queues[/{vhost}]` lists them.
fn vhost_queues(shared: &Shared, vhost: &Vhost) -> Vec<Value> {
    vhost
        .queues()
        .iter()
        .map(|q| queue_json(shared, &vhost.name, q))
        .collect()
}

/// The vhost and the queue a path names (404 if either is missing).
fn find(
    shared: &Shared,
    user: &AuthUser,
    vhost: &str,
    name: &str,
) -> Result<(Arc<Vhost>, Arc<Queue>), ApiError> {
    let vhost = shared.vhost_for(user, vhost)?;
    let q = vhost.find_queue(name).ok_or_else(not_found)?;
    Ok((vhost, q))
}

/// `GET /api/queues/{vhost}/{name}`.
async fn show(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (vhost, q) = find(&shared, &user, &vhost, &name)?;
    Ok(Json(queue_json(&shared, &vhost.name, &q)))
}

/// `PUT /api/queues/{vhost}/{name}` with `{"durable", "auto_delete", "arguments"}` (all
/// optional, defaulting as in `queue.declare`: not durable): 201 when created, 204 when an
/// equivalent queue exists, 400 when it is not equivalent.
async fn declare(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let vhost = shared.vhost_for(&user, &vhost)?;
    let body = object_body(&body)?;
    let flags = QueueFlags {
        durable: bool_field(&body, "durable", false)?,
        exclusive: false,
        auto_delete: bool_field(&body, "auto_delete", false)?,
    };
    let arguments = arguments_field(&body)?;
    if name.is_empty() || name.len() > 255 {
        return Err(bad_request("queue names are 1 to 255 bytes"));
    }
    let existed = vhost.find_queue(&name).is_some();
    vhost
        .declare_queue(&ShortString::from(name), false, flags, &arguments, OPERATOR)
        .map_err(amqp_error)?;
    Ok(created_or_no_content(!existed))
}

/// `DELETE /api/queues/{vhost}/{name}[?if-empty=true][&if-unused=true]`: 204, or 400 when a
/// condition does not hold or the queue is another connection's exclusive one.
async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let (vhost, q) = find(&shared, &user, &vhost, &name)?;
    let (if_unused, if_empty) = (
        query_flag(query.as_deref(), "if-unused"),
        query_flag(query.as_deref(), "if-empty"),
    );
    vhost
        .delete_queue(&q.name, if_unused, if_empty, OPERATOR)
        .map_err(amqp_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The queue a path names for `/contents` and `/get`, which RabbitMQ's API serves on a channel
/// of its own: another connection's exclusive queue is locked to it (400 `405
/// RESOURCE_LOCKED - ...`).
fn find_usable(
    shared: &Shared,
    user: &AuthUser,
    vhost: &str,
    name: &str,
) -> Result<(Arc<Vhost>, Arc<Queue>), ApiError> {
    let (vhost, q) = find(shared, user, vhost, name)?;
    let q = vhost.queue(&q.name, OPERATOR).map_err(channel_error)?;
    Ok((vhost, q))
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: drops the ready messages (204).
async fn purge(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (_, q) = find_usable(&shared, &user, &vhost, &name)?;
    q.purge();
    Ok(StatusCode::NO_CONTENT)
}

/// What `/get` does with the messages it takes (RabbitMQ's `ackmode`).
#[derive(Clone, Copy, PartialEq)]
enum AckMode {
    /// Acknowledged: gone.
    Ack,
    /// Returned to the queue afterwards, marked redelivered.
    Requeue,
    /// Rejected without requeue: dead-lettered if the queue says so.
    Reject,
}

/// `POST /api/queues/{vhost}/{name}/get` with `{"count", "ackmode", "encoding", "truncate"}`:
/// takes up to `count` messages, in order. Requeued ones go back once all are taken (so the
/// same message is not taken twice), as RabbitMQ does.
async fn get_messages(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Vec<Value>>, ApiError> {
    let (vhost, q) = find_usable(&shared, &user, &vhost, &name)?;
    let body = object_body(&body)?;
    require_keys(&body, &["ackmode", "count", "encoding"])?;
    let count = body["count"]
        .as_u64()
        .ok_or_else(|| bad_request("count must be a non-negative integer"))?;
    let mode = match body["ackmode"].as_str() {
        Some("ack_requeue_true" | "reject_requeue_true") => AckMode::Requeue,
        Some("ack_requeue_false") => AckMode::Ack,
        Some("reject_requeue_false") => AckMode::Reject,
        _ => {
            return Err(bad_request(format_args!(
                "unknown ackmode {}",
                body["ackmode"]
            )));
        }
    };
    let base64_always = match body["encoding"].as_str() {
        Some("auto") => false,
        Some("base64") => true,
        _ => {
            return Err(bad_request(
                "Unsupported encoding. Please use auto or base64.",
            ));
        }
    };
    let truncate = match body.get("truncate") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad_request("truncate must be a non-negative integer"))?,
        ),
    };
    let mut out = Vec::new();
    let mut taken = Vec::new();
    for _ in 0..count {
        let Some((entry, remaining)) = q.get(mode == AckMode::Ack) else {
            break;
        };
        let msg = &entry.msg;
        let shown = match truncate {
            Some(n) => &msg.body[..msg.body.len().min(usize::try_from(n).unwrap_or(usize::MAX))],
            None => &msg.body[..],
        };
        let (payload, encoding) = match std::str::from_utf8(shown) {
            Ok(text) if !base64_always => (text.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(shown),
                "base64",
            ),
        };
        let properties = q
            .properties_for(&entry)
            .unwrap_or_else(|| msg.properties.clone());
        out.push(json!({
            "payload_bytes": msg.body.len(),
            "redelivered": entry.redelivered,
            "exchange": msg.exchange.as_str(),
            "routing_key": msg.routing_key.as_str(),
            "message_count": remaining,
            "properties": json::properties(&properties),
            "payload": payload,
            "payload_encoding": encoding,
        }));
        if mode != AckMode::Ack {
            taken.push(entry);
        }
    }
    match mode {
        AckMode::Ack => {}
        AckMode::Requeue => q.requeue(taken, true),
        AckMode::Reject => {
            for entry in &taken {
                vhost.dead_letter(&q, &entry.msg, Reason::Rejected);
                q.settle(entry);
            }
        }
    }
    Ok(Json(out))
}

/// `GET /api/queues/{vhost}/{name}/bindings`: the bindings with this queue as destination,
/// the default exchange's implicit one first, as RabbitMQ lists them.
async fn bindings(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let (vhost, q) = find(&shared, &user, &vhost, &name)?;
    let mut out = vec![default_binding_json(&vhost.name, q.name.as_str())];
    out.extend(bindings_to(&vhost, &Destination::Queue(q.name.clone())));
    Ok(Json(out))
}
