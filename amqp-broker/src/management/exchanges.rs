//! Exchanges and bindings: `/api/exchanges[/{vhost}[/{name}]]` to list, show, declare and
//! delete exchanges, `/publish` to publish for debugging, and `/api/bindings...` to list,
//! create and delete bindings. The default exchange is `amq.default` in paths, `""` in
//! answers, as in RabbitMQ.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::Arc;

use amq_protocol::types::ShortString;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use super::queues::OPERATOR;
use super::{
    ApiError, AuthUser, Shared, amqp_error, arguments_field, bad_request, bool_field,
    channel_error, created_or_no_content, encode_path_segment, json, list_in_vhost,
    list_in_visible_vhosts, not_found, object_body, query_flag, require_keys, string_field_or,
};
use crate::exchange::{Binding, Destination};
use crate::vhost::{ExchangeFlags, ExchangeSnapshot, Published, Vhost};

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/exchanges", list_in_visible_vhosts(vhost_exchanges))
        .route("/api/exchanges/{vhost}", list_in_vhost(vhost_exchanges))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(show).put(declare).delete(delete),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings_destination),
        )
        .route(
            "/api/bindings",
            list_in_visible_vhosts(|_, v| vhost_bindings(v)),
        )
        .route(
            "/api/bindings/{vhost}",
            list_in_vhost(|_, v| vhost_bindings(v)),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(bindings_between).post(bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(binding_show).delete(unbind),
        )
}

/// The exchange name a path segment means (`amq.default` is the default exchange).
fn exchange_name(segment: &str) -> &str {
    if segment == "amq.default" {
        ""
    } else {
        segment
    }
}

fn exchange_json(vhost: &str, x: &ExchangeSnapshot) -> Value {
    json!({
        "name": x.name,
        "vhost": vhost,
        "type": x.kind,
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": json::table(&x.arguments),
    })
}

/// A routing key or hash as RabbitMQ quotes it in a `properties_key`: letters, digits and
/// `.-_` as they are, a space as `+`, everything else (`~` included) as `%XX`.
fn quote_binding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Undoes [`quote_binding`] (and any other percent-encoding of the same text); a `%` not
/// followed by two hex digits stays as it is.
fn unquote_binding(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || {
            let digits = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            u8::from_str_radix(digits, 16).ok()
        };
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if hex().is_some() => {
                out.extend(hex());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The hash naming a binding's arguments in its `properties_key` (RabbitMQ's shape, this
/// broker's own hash).
fn arguments_hash(b: &Binding) -> String {
    let mut h = DefaultHasher::new();
    json::table(&b.arguments).to_string().hash(&mut h);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finish().to_be_bytes())
}

/// The `properties_key` that names a binding in paths, as RabbitMQ packs it: `~` for an empty
/// key without arguments, the quoted routing key, and with arguments `key~hash`.
fn properties_key(b: &Binding) -> String {
    let key = quote_binding(b.routing_key.as_str());
    if b.arguments.inner().is_empty() {
        return if key.is_empty() { "~".into() } else { key };
    }
    format!("{key}~{}", quote_binding(&arguments_hash(b)))
}

/// Whether `raw` (a path's last segment, still encoded) names binding `b`: split at its first
/// literal `~` into the routing key and the arguments' hash, each unquoted, as RabbitMQ
/// unpacks it.
fn names_binding(raw: &str, b: &Binding) -> bool {
    let (key, hash) = match raw.split_once('~') {
        Some((key, hash)) => (unquote_binding(key), Some(unquote_binding(hash))),
        None => (unquote_binding(raw), None),
    };
    let hash = hash.filter(|h| !h.is_empty());
    key == b.routing_key.as_str()
        && match hash {
            None => b.arguments.inner().is_empty(),
            Some(h) => !b.arguments.inner().is_empty() && h == arguments_hash(b),
        }
}

/// A binding in RabbitMQ's JSON shape.
pub(super) fn binding_json(vhost: &str, source: &str, b: &Binding) -> Value {
    let (destination, kind) = match &b.destination {
        Destination::Queue(q) => (q.as_str(), "queue"),
        Destination::Exchange(x) => (x.as_str(), "exchange"),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": b.routing_key.as_str(),
        "arguments": json::table(&b.arguments),
        "properties_key": properties_key(b),
    })
}

/// The default exchange's implicit binding to a queue (RabbitMQ lists it too).
pub(super) fn default_binding_json(vhost: &str, queue: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": if queue.is_empty() { "~".to_owned() } else { quote_binding(queue) },
    })
}

/// A vhost's exchanges, as `GET /api/exchanges[/{vhost}]` lists them.
fn vhost_exchanges(_: &Shared, vhost: &Vhost) -> Vec<Value> {
    vhost
        .exchanges()
        .iter()
        .map(|x| exchange_json(&vhost.name, x))
        .collect()
}

fn find_exchange(vhost: &Vhost, segment: &str) -> Result<ExchangeSnapshot, ApiError> {
    let name = exchange_name(segment);
    vhost
        .exchanges()
        .into_iter()
        .find(|x| x.name == name)
        .ok_or_else(not_found)
}

/// `GET /api/exchanges/{vhost}/{name}`.
async fn show(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = shared.vhost_for(&user, &vhost)?;
    let x = find_exchange(&v, &name)?;
    Ok(Json(exchange_json(&v.name, &x)))
}

/// `PUT /api/exchanges/{vhost}/{name}` with `{"type", "durable", "auto_delete", "internal",
/// "arguments"}` (all optional, defaulting as in `exchange.declare`: a transient `direct`
/// exchange): 201 created, 204 when an equivalent one exists, 400 otherwise.
async fn declare(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let v = shared.vhost_for(&user, &vhost)?;
    let body = object_body(&body)?;
    let kind = string_field_or(&body, "type", "direct")?;
    let flags = ExchangeFlags {
        durable: bool_field(&body, "durable", false)?,
        auto_delete: bool_field(&body, "auto_delete", false)?,
        internal: bool_field(&body, "internal", false)?,
    };
    let arguments = arguments_field(&body)?;
    let name = exchange_name(&name);
    if name.len() > 255 {
        return Err(bad_request("exchange names are at most 255 bytes"));
    }
    let existed = v.exchanges().iter().any(|x| x.name == name);
    v.declare_exchange(&ShortString::from(name), kind, false, flags, &arguments)
        .map_err(amqp_error)?;
    Ok(created_or_no_content(!existed))
}

/// `DELETE /api/exchanges/{vhost}/{name}[?if-unused=true]`.
async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let v = shared.vhost_for(&user, &vhost)?;
    let x = find_exchange(&v, &name)?;
    let if_unused = query_flag(query.as_deref(), "if-unused");
    v.delete_exchange(&ShortString::from(x.name), if_unused)
        .map_err(amqp_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A string field of a request body (checked present by [`require_keys`]).
fn string_field<'a>(body: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    body[key]
        .as_str()
        .ok_or_else(|| bad_request(format_args!("{key} must be a string")))
}

/// `POST /api/exchanges/{vhost}/{name}/publish` with `{"properties", "routing_key",
/// "payload", "payload_encoding"}` (all required, as in RabbitMQ): `{"routed": bool}`, or 400
/// when a queue refuses the message (what would be a nack).
async fn publish(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let v = shared.vhost_for(&user, &vhost)?;
    let x = find_exchange(&v, &name)?;
    let body = object_body(&body)?;
    require_keys(
        &body,
        &["routing_key", "properties", "payload", "payload_encoding"],
    )?;
    let routing_key = string_field(&body, "routing_key")?;
    let payload = string_field(&body, "payload")?;
    let payload = match string_field(&body, "payload_encoding")? {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| bad_request(format_args!("payload is not base64: {e}")))?,
        ),
        other => {
            return Err(bad_request(format_args!(
                "payload_encoding must be string or base64, not '{other}'"
            )));
        }
    };
    let properties = json::to_properties(&body["properties"]).map_err(bad_request)?;
    if routing_key.len() > 255 {
        return Err(bad_request("routing_key is at most 255 bytes"));
    }
    let routed = v
        .publish_by_operator(
            &ShortString::from(x.name),
            &ShortString::from(routing_key),
            properties,
            payload,
        )
        .map_err(channel_error)?;
    match routed {
        Published::Routed => Ok(Json(json!({ "routed": true }))),
        Published::Unroutable => Ok(Json(json!({ "routed": false }))),
        // RabbitMQ's words for a nack.
        Published::Refused => Err(bad_request(
            "rejected Unable to publish message. Check queue limits.",
        )),
    }
}

/// Every binding in `vhost`, the default exchange's implicit ones first (as RabbitMQ lists),
/// as `GET /api/bindings[/{vhost}]` lists them.
fn vhost_bindings(vhost: &Vhost) -> Vec<Value> {
    let mut out: Vec<Value> = vhost
        .queues()
        .iter()
        .map(|q| default_binding_json(&vhost.name, q.name.as_str()))
        .collect();
    for x in vhost.exchanges() {
        out.extend(
            x.bindings
                .iter()
                .map(|b| binding_json(&vhost.name, &x.name, b)),
        );
    }
    out
}

/// The explicit bindings in `vhost` (the default exchange's implicit ones aside) whose
/// destination is `destination`, in exchange order.
pub(super) fn bindings_to(vhost: &Vhost, destination: &Destination) -> Vec<Value> {
    let mut out = Vec::new();
    for x in vhost.exchanges() {
        for b in x.bindings.iter().filter(|b| b.destination == *destination) {
            out.push(binding_json(&vhost.name, &x.name, b));
        }
    }
    out
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/source`: bindings from this exchange.
async fn bindings_source(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let v = shared.vhost_for(&user, &vhost)?;
    let x = find_exchange(&v, &name)?;
    Ok(Json(
        x.bindings
            .iter()
            .map(|b| binding_json(&v.name, &x.name, b))
            .collect(),
    ))
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/destination`: bindings to this exchange.
async fn bindings_destination(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let v = shared.vhost_for(&user, &vhost)?;
    let target = find_exchange(&v, &name)?;
    let destination = Destination::Exchange(ShortString::from(target.name));
    Ok(Json(bindings_to(&v, &destination)))
}

/// The source exchange and destination a `/api/bindings/{vhost}/e/{source}/{q|e}/{dest}`
/// path names (404 when either is missing, as RabbitMQ answers).
fn binding_ends(
    shared: &Shared,
    user: &AuthUser,
    (vhost, source, kind, destination): &(String, String, String, String),
) -> Result<(Arc<Vhost>, ExchangeSnapshot, Destination), ApiError> {
    let v = shared.vhost_for(user, vhost)?;
    let x = find_exchange(&v, source)?;
    let destination = match kind.as_str() {
        "q" => {
            let q = v.find_queue(destination).ok_or_else(not_found)?;
            Destination::Queue(q.name.clone())
        }
        "e" => Destination::Exchange(ShortString::from(find_exchange(&v, destination)?.name)),
        _ => return Err(not_found()),
    };
    Ok((v, x, destination))
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`: the bindings between the two.
async fn bindings_between(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(path): Path<(String, String, String, String)>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let (v, x, destination) = binding_ends(&shared, &user, &path)?;
    Ok(Json(
        x.bindings
            .iter()
            .filter(|b| b.destination == destination)
            .map(|b| binding_json(&v.name, &x.name, b))
            .collect(),
    ))
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}` with `{"routing_key",
/// "arguments"}`: 201 with a `Location` header naming the binding, as RabbitMQ answers.
async fn bind(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(path): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (v, x, destination) = binding_ends(&shared, &user, &path)?;
    let body = object_body(&body)?;
    let routing_key = string_field_or(&body, "routing_key", "")?;
    if routing_key.len() > 255 {
        return Err(bad_request("routing_key is at most 255 bytes"));
    }
    let arguments = arguments_field(&body)?;
    let binding = Binding {
        destination,
        routing_key: ShortString::from(routing_key),
        arguments,
    };
    v.set_binding(
        true,
        &ShortString::from(x.name),
        binding.destination.clone(),
        &binding.routing_key,
        &binding.arguments,
        OPERATOR,
    )
    .map_err(amqp_error)?;
    let (vhost, source, kind, dest) = &path;
    let location = format!(
        "/api/bindings/{}/e/{}/{kind}/{}/{}",
        encode_path_segment(vhost),
        encode_path_segment(source),
        encode_path_segment(dest),
        properties_key(&binding)
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// The binding between the two ends that the request path's last segment (its
/// `properties_key`, read undecoded so that an encoded `~` stays apart from the separator)
/// names; 404 if none.
fn binding_named(
    shared: &Shared,
    user: &AuthUser,
    path: &(String, String, String, String, String),
    uri: &Uri,
) -> Result<(Arc<Vhost>, String, Binding), ApiError> {
    let (vhost, source, kind, dest, _) = path;
    let ends = (vhost.clone(), source.clone(), kind.clone(), dest.clone());
    let (v, x, destination) = binding_ends(shared, user, &ends)?;
    let raw = uri.path().rsplit('/').next().unwrap_or_default();
    let b = x
        .bindings
        .into_iter()
        .find(|b| b.destination == destination && names_binding(raw, b))
        .ok_or_else(not_found)?;
    Ok((v, x.name, b))
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
async fn binding_show(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(path): Path<(String, String, String, String, String)>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let (v, source, b) = binding_named(&shared, &user, &path, &uri)?;
    Ok(Json(binding_json(&v.name, &source, &b)))
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`: 204.
async fn unbind(
    State(shared): State<Arc<Shared>>,
    Extension(user): Extension<AuthUser>,
    Path(path): Path<(String, String, String, String, String)>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let (v, source, b) = binding_named(&shared, &user, &path, &uri)?;
    v.set_binding(
        false,
        &ShortString::from(source),
        b.destination,
        &b.routing_key,
        &b.arguments,
        OPERATOR,
    )
    .map_err(amqp_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn binding(key: &str, args: bool) -> Binding {
        let mut arguments = FieldTable::default();
        if args {
            arguments.insert("x-match".into(), AMQPValue::LongString("all".into()));
        }
        Binding {
            destination: Destination::Queue("q".into()),
            routing_key: key.into(),
            arguments,
        }
    }

    #[test]
    fn properties_keys_are_packed_and_unpacked_as_rabbitmq_does() {
        assert_eq!(properties_key(&binding("", false)), "~");
        assert_eq!(properties_key(&binding("a.*", false)), "a.%2A");
        assert_eq!(properties_key(&binding("a b~c", false)), "a+b%7Ec");
        for (key, args) in [
            ("", false),
            ("a.*", false),
            ("a b~c", false),
            ("~", false),
            ("k", true),
            ("", true),
        ] {
            let b = binding(key, args);
            assert!(names_binding(&properties_key(&b), &b), "{key} {args}");
        }
        // An empty key is not a literal "~", and arguments must match.
        assert!(!names_binding("~", &binding("~", false)));
        assert!(!names_binding("k", &binding("k", true)));
        assert!(!names_binding("k~nothash", &binding("k", true)));
        // Clients may leave characters unencoded that RabbitMQ would encode.
        assert!(names_binding("a.*", &binding("a.*", false)));
    }
}
