//! The web dashboard: one page, one script and one stylesheet, compiled into the binary, so the
//! broker serves its own UI with no build step and no network access (no CDN, no framework).
//!
//! `/` is the page; `/dashboard/dashboard.js` and `/dashboard/dashboard.css` are its assets. They
//! are served without authentication, as RabbitMQ's management UI serves its own: they are the
//! same for every user and hold no broker data. The page asks for a user and password in a login
//! form (kept in the tab's `sessionStorage`) and sends them as basic auth with every API call, so
//! every piece of broker data still goes through [`super::require_user`].

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Only the broker's own script and stylesheet, and fetches to the broker's own API: data shown by
/// the page (queue names, client properties) can never load or run anything else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

/// One asset with its type and the headers that keep it safe and fresh: `no-cache` so a browser
/// revalidates after the broker is upgraded, `nosniff` so the type is taken as given, the CSP
/// above, and no framing (the page has buttons that purge and delete queues).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}
