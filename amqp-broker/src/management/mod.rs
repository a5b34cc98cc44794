//! The management HTTP API: the commonly used subset of RabbitMQ's management plugin, on its own
//! port, so tools and scripts written for RabbitMQ work against the bundled broker.
//!
//! Every `/api` route needs HTTP basic auth with a broker user tagged `management`,
//! `policymaker`, `monitoring` or `administrator` (as RabbitMQ's plugin does; a missing or wrong
//! `Authorization` header, or a user without such a tag, gets 401 with a `WWW-Authenticate`
//! challenge, but for a page's script: see [`require_user`]). Users, vhosts, permissions and
//! definitions need `administrator` ([`access`]); other users see the vhosts they have
//! permissions on ([`Shared::may_access`]).
//! `/metrics` ([`metrics`]) is public, as RabbitMQ's prometheus endpoint: scrapers carry no
//! credentials.
//! Answers are JSON in RabbitMQ's shapes; errors are `{"error": ..., "reason": ...}` as there.
//!
//! The router is assembled from one module per area: [`api`] (overview, vhosts), [`queues`],
//! [`exchanges`] (exchanges, bindings, publishing) and [`connections`] (connections,
//! channels, consumers); further areas add their own `routes()` and are merged in [`router`].
//! [`json`] converts AMQP tables and properties to and from RabbitMQ's JSON; [`stats`] turns
//! the message counters into `message_stats` with rates. [`dashboard`] is the web UI's page and
//! assets, outside the auth layer (they hold no broker data; the page's script calls the API
//! with the user's credentials).

mod access;
mod api;
mod connections;
mod dashboard;
mod exchanges;
mod json;
mod metrics;
mod queues;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Access;
use crate::broker::Signal;
use crate::error::{AmqpError, reply};
use crate::registry::Registry;
use crate::vhost::Vhost;

/// What every handler reads: the broker's parts, shared with the AMQP side.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Users, vhosts and permissions.
    pub access: Arc<Access>,
    pub registry: Arc<Registry>,
    /// The AMQP listener's address (reported in `/api/overview`'s `listeners`).
    pub amqp_addr: SocketAddr,
    /// This API's own address (reported in `listeners` too).
    pub management_addr: SocketAddr,
    /// The last samples of the message counters, for `message_stats` rates.
    pub rates: stats::Rates,
}

impl Shared {
    /// Every virtual host, in name order.
    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.access.vhosts()
    }

    /// Whether `user` may see and act on the objects of vhost `vhost`: administrators may use
    /// every vhost, other users those they have permissions on (as RabbitMQ's plugin decides).
    /// Every route decides through here.
    pub fn may_access(&self, user: &AuthUser, vhost: &str) -> bool {
        user.administrator || self.access.permission(vhost, &user.name).is_some()
    }

    /// The vhosts `user` may see, in name order.
    pub fn vhosts_for(&self, user: &AuthUser) -> Vec<Arc<Vhost>> {
        self.vhosts()
            .into_iter()
            .filter(|v| self.may_access(user, &v.name))
            .collect()
    }

    /// The vhost named `name` if `user` may use it: 404 if there is none, 401 "User not
    /// authorised to access virtual host" if the user may not, as RabbitMQ answers.
    pub fn vhost_for(&self, user: &AuthUser, name: &str) -> Result<Arc<Vhost>, ApiError> {
        let vhost = self.access.vhost(name).ok_or_else(not_found)?;
        if !self.may_access(user, name) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                "User not authorised to access virtual host",
            ));
        }
        Ok(vhost)
    }
}

/// The user a request authenticated as; handlers take it as an `Extension`.
#[derive(Clone, Debug)]
pub(crate) struct AuthUser {
    pub name: String,
    /// Tagged `administrator`: may manage users, vhosts, permissions and definitions.
    pub administrator: bool,
}

/// Serves the API on `listener` until the broker shuts down.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut signal: watch::Receiver<Signal>,
) {
    let app = router(shared);
    let stop = async move {
        let _ = signal.wait_for(|s| *s == Signal::Shutdown).await;
    };
    // The peer's address reaches `require_user` (loopback-only users).
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("management API stopped: {e}");
    }
}

/// The API's routes behind basic auth, and the public ones beside them (`/metrics`, the
/// dashboard's page and assets).
fn router(shared: Arc<Shared>) -> Router {
    let authenticated = Router::new()
        .merge(api::routes())
        .merge(queues::routes())
        .merge(exchanges::routes())
        .merge(connections::routes())
        .merge(access::routes())
        .layer(middleware::from_fn_with_state(shared.clone(), require_user));
    Router::new()
        .merge(authenticated)
        .merge(metrics::routes())
        .merge(dashboard::routes())
        .with_state(shared)
}

/// Basic auth against the broker's users, as RabbitMQ's management plugin: a user needs a
/// management-capable tag ("Not management user" otherwise), and a loopback-only user must
/// come from a loopback address.
///
/// The 401 carries a `WWW-Authenticate` challenge, except for requests marked
/// `X-Requested-With: XMLHttpRequest` (the dashboard's): a browser answers a challenge to a
/// script's request with its own login dialog, over the page's login form.
async fn require_user(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let refusal = match basic_credentials(req.headers()) {
        None => "Login failed",
        Some((name, password)) => match shared.access.authenticate(&name, &password) {
            Some(_)
                if shared.access.is_loopback_only(&name)
                    && !peer.ip().to_canonical().is_loopback() =>
            {
                "User can only log in via localhost"
            }
            Some(user) if user.is_management() => {
                let administrator = user.is_administrator();
                req.extensions_mut().insert(AuthUser {
                    name,
                    administrator,
                });
                return next.run(req).await;
            }
            Some(_) => "Not management user",
            None => "Login failed",
        },
    };
    let mut response = not_authorised(refusal);
    if from_script(req.headers()) {
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    response
}

/// Whether a request says it comes from a page's script (`X-Requested-With: XMLHttpRequest`).
fn from_script(headers: &HeaderMap) -> bool {
    headers
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"))
}

/// 401 with RabbitMQ's challenge and `{"error": "not_authorised", "reason": reason}`.
pub(crate) fn not_authorised(reason: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "not_authorised", reason);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    response
}

/// `Authorization: Basic base64(name:password)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

/// 404 for an object that does not exist, in RabbitMQ's words.
pub(crate) fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

/// 400 with RabbitMQ's `bad_request` error and the reason.
pub(crate) fn bad_request(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", &reason.to_string())
}

/// A route's error answer, rendered by [`error`]: handlers return `Result<_, ApiError>`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: &str) -> Self {
        Self {
            status,
            error,
            reason: reason.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.error, &self.reason)
    }
}

/// An AMQP error from a declaration, deletion or binding, answered as RabbitMQ's API answers
/// them (its `direct_request`): 404 `not_found` and 400 `bad_request` with the explanation
/// (the reply text without its `NAME - ` prefix), 401 "Access refused." for ACCESS_REFUSED and
/// NOT_ALLOWED.
pub(crate) fn amqp_error(e: AmqpError) -> ApiError {
    let explanation = e
        .text
        .split_once(" - ")
        .map_or(e.text.as_str(), |(_, detail)| detail);
    match e.code {
        reply::NOT_FOUND => ApiError::new(StatusCode::NOT_FOUND, "not_found", explanation),
        reply::ACCESS_REFUSED | reply::NOT_ALLOWED => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.",
        ),
        _ => bad_request(explanation),
    }
}

/// An AMQP error from a publish, answered as RabbitMQ's API answers errors on the channel it
/// publishes on: 404 `not_found` and 401 `not_authorised` with the reply text, 400
/// `bad_request` with "CODE TEXT" otherwise.
pub(crate) fn channel_error(e: AmqpError) -> ApiError {
    match e.code {
        reply::NOT_FOUND => ApiError::new(StatusCode::NOT_FOUND, "not_found", &e.text),
        reply::ACCESS_REFUSED => ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", &e.text),
        code => bad_request(format_args!("{code} {}", e.text)),
    }
}

/// 400 naming the keys a body lacks, in RabbitMQ's words (`[{key_missing,payload}]`), or
/// `Ok` when it has them all.
pub(crate) fn require_keys(body: &Value, keys: &[&str]) -> Result<(), ApiError> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| body.get(**k).is_none())
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(bad_request(format_args!("[{}]", missing.join(","))))
}

/// A request body that must be a JSON object: empty or `null` is `{}` (RabbitMQ takes it as
/// "all defaults"); anything else that is not an object is 400 `not_json`, as there.
pub(crate) fn object_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Null) => Ok(serde_json::json!({})),
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(bad_request("not_json")),
    }
}

/// A boolean field of a request body, with its default when absent or `null`.
pub(crate) fn bool_field(body: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_request(format_args!("{key} must be true or false"))),
    }
}

/// A string field of a request body, with its default when absent or `null`.
pub(crate) fn string_field_or<'a>(
    body: &'a Value,
    key: &str,
    default: &'a str,
) -> Result<&'a str, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(bad_request(format_args!("{key} must be a string"))),
    }
}

/// The `arguments` object of a declaration or binding body as a field table (none when
/// absent or `null`), or 400 when it is not an object.
pub(crate) fn arguments_field(body: &Value) -> Result<FieldTable, ApiError> {
    json::to_table(body.get("arguments").unwrap_or(&Value::Null), "arguments").map_err(bad_request)
}

/// 201 when a `PUT` created the object, 204 when it already existed (replaced, or found
/// equivalent), as RabbitMQ answers.
pub(crate) fn created_or_no_content(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// Whether the query string sets `key=true` (`?if-unused=true`).
pub(crate) fn query_flag(query: Option<&str>, key: &str) -> bool {
    query
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.split_once('=') == Some((key, "true")))
}

/// One vhost's objects of a kind as RabbitMQ's JSON rows (in the order a listing shows them).
pub(crate) type VhostRows = fn(&Shared, &Vhost) -> Vec<Value>;

/// The `GET` listing of a kind of object across vhosts (`/api/queues`): the `rows` of every
/// vhost the user may see, in vhost name order.
pub(crate) fn list_in_visible_vhosts(rows: VhostRows) -> MethodRouter<Arc<Shared>> {
    get(
        move |State(shared): State<Arc<Shared>>, Extension(user): Extension<AuthUser>| async move {
            let vhosts = shared.vhosts_for(&user);
            Json(
                vhosts
                    .iter()
                    .flat_map(|v| rows(&shared, v))
                    .collect::<Vec<_>>(),
            )
        },
    )
}

/// The `GET` listing of a kind of object in one vhost (`/api/queues/{vhost}`): that vhost's
/// `rows`, or 404 / 401 as [`Shared::vhost_for`] answers.
pub(crate) fn list_in_vhost(rows: VhostRows) -> MethodRouter<Arc<Shared>> {
    get(
        move |State(shared): State<Arc<Shared>>,
              Extension(user): Extension<AuthUser>,
              Path(vhost): Path<String>| async move {
            let v = shared.vhost_for(&user, &vhost)?;
            Ok::<_, ApiError>(Json(rows(&shared, &v)))
        },
    )
}

/// What a path segment percent-encodes: every byte but RFC 3986's unreserved characters
/// (letters, digits, `-._~`).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a name for a path segment of this API (the vhost `/` becomes `%2F`): the
/// `Location` of a new binding, and the paths `amqp-broker ctl` requests (re-exported for the
/// binary, not part of the library's API).
pub fn encode_path_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// The node name reported in `node` fields (RabbitMQ's `rabbit@host`).
pub(crate) const NODE: &str = "amqp-broker@localhost";

/// An error answer in RabbitMQ's shape: `{"error": "not_found", "reason": "Object Not Found"}`.
pub(crate) fn error(status: StatusCode, error: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": error, "reason": reason })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_encode_all_but_unreserved_characters() {
        assert_eq!(encode_path_segment("/"), "%2F");
        assert_eq!(encode_path_segment("a b->c"), "a%20b-%3Ec");
        assert_eq!(encode_path_segment("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode_path_segment("é+%"), "%C3%A9%2B%25");
    }
}
