//! The management HTTP API: the commonly used subset of RabbitMQ's management plugin, on its own
//! port, so tools and scripts written for RabbitMQ work against the bundled broker.
//!
//! Every route needs HTTP basic auth with a broker user tagged `management`, `policymaker`,
//! `monitoring` or `administrator` (as RabbitMQ's plugin does; a missing or wrong
//! `Authorization` header, or a user without such a tag, gets 401 with a `WWW-Authenticate`
//! challenge). Users, vhosts, permissions and definitions need `administrator` ([`access`]).
//! Answers are JSON in RabbitMQ's shapes; errors are `{"error": ..., "reason": ...}` as there.
//!
//! The router is assembled from one module per area: [`api`] (overview and the objects);
//! further areas add their own `routes()` and are merged in [`router`].

mod access;
mod api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Access;
use crate::broker::Signal;
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
}

impl Shared {
    /// Every virtual host, in name order.
    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.access.vhosts()
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

/// All routes, behind basic auth.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(access::routes())
        .layer(middleware::from_fn_with_state(shared.clone(), require_user))
        .with_state(shared)
}

/// Basic auth against the broker's users, as RabbitMQ's management plugin: a user needs a
/// management-capable tag ("Not management user" otherwise), and a loopback-only user must
/// come from a loopback address.
async fn require_user(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some((name, password)) = basic_credentials(req.headers()) else {
        return not_authorised("Login failed");
    };
    match shared.access.authenticate(&name, &password) {
        Some(_)
            if shared.access.is_loopback_only(&name) && !peer.ip().to_canonical().is_loopback() =>
        {
            not_authorised("User can only log in via localhost")
        }
        Some(user) if user.is_management() => {
            let administrator = user.is_administrator();
            req.extensions_mut().insert(AuthUser {
                name,
                administrator,
            });
            next.run(req).await
        }
        Some(_) => not_authorised("Not management user"),
        None => not_authorised("Login failed"),
    }
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

/// An error answer in RabbitMQ's shape: `{"error": "not_found", "reason": "Object Not Found"}`.
pub(crate) fn error(status: StatusCode, error: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": error, "reason": reason })),
    )
        .into_response()
}
