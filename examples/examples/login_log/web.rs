//! The login service: `POST /login` with `{"user": …, "password": …}`, served by axum. It
//! publishes a `LoginEvent` for each successful login and answers without waiting for the record.

use std::net::SocketAddr;

use amqp_core::Template;
use axum::extract::{ConnectInfo, State};
use axum::{Json, Router, http::StatusCode, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::LoginEvent;

/// The accounts of the demo: user name and password.
pub const USERS: [(&str, &str); 3] = [
    ("ann", "wonderland"),
    ("bob", "builder"),
    ("chen", "teapot"),
];

#[derive(Debug, Deserialize)]
struct Login {
    user: String,
    password: String,
}

/// `POST /login`: 200 with the login id, or 401. The event is with the broker (confirmed) before
/// the answer goes out; the record is written later.
async fn login(
    State(template): State<Template>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(login): Json<Login>,
) -> (StatusCode, Json<Value>) {
    if !USERS.contains(&(login.user.as_str(), login.password.as_str())) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "wrong user name or password" })),
        );
    }
    let event = LoginEvent {
        login_id: uuid::Uuid::new_v4().to_string(),
        user: login.user,
        ip: peer.ip().to_string(),
        at_ms: std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_millis() as i64),
    };
    match template
        .convert_and_send("login_log.logins", "login.succeeded", &event)
        .await
    {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "welcome": event.user, "login_id": event.login_id })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

/// Serves the login service on `listener` until `stop` resolves.
pub fn serve(
    template: Template,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let routes = Router::new()
        .route("/login", post(login))
        .with_state(template);
    let service = routes.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        axum::serve(listener, service)
            .with_graceful_shutdown(stop)
            .await
    });
}
