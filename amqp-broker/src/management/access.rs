//! Users, vhosts, permissions and definitions: `/api/users`, `/api/vhosts/{name}`,
//! `/api/permissions`, `/api/definitions`, in RabbitMQ's shapes. Every route here needs the
//! `administrator` tag (401 "Not administrator user" otherwise, as RabbitMQ answers).
//!
//! Names in paths are percent-encoded (`%2F` for the vhost `/`). Creating answers 201,
//! replacing or deleting 204, an unknown object 404, a bad body 400.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::{
    ApiError, AuthUser, Shared, bad_request, created_or_no_content, not_authorised, not_found,
};
use crate::access::UserRecord;
use crate::access::definitions::{Document, Tags};
use crate::access::password::PasswordHash;
use crate::access::permission::Permission;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/users", get(list_users))
        .route(
            "/api/users/{name}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route(
            "/api/vhosts/{name}",
            axum::routing::put(put_vhost).delete(delete_vhost),
        )
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(get_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
        .route_layer(middleware::from_fn(require_administrator))
}

/// RabbitMQ's administrator check, in front of every route here (behind the API's
/// authentication, which put the [`AuthUser`] in the request): 401 "Not administrator user"
/// otherwise, before the path or body is read.
async fn require_administrator(req: Request, next: Next) -> Response {
    let administrator = req
        .extensions()
        .get::<AuthUser>()
        .is_some_and(|user| user.administrator);
    if !administrator {
        return not_authorised("Not administrator user");
    }
    next.run(req).await
}

/// What a handler answers: the response, or an error in RabbitMQ's shape.
type Answer = Result<Response, ApiError>;

/// What a `DELETE` answers from the registry's outcome: 204 when the object existed and is
/// gone, 404 when there was none, 400 with the reason it could not be deleted.
fn deleted(existed: Result<bool, String>) -> Answer {
    match existed {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(not_found()),
        Err(e) => Err(bad_request(e)),
    }
}

/// A JSON body, or 400 with serde's reason.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

/// Runs blocking registry work (vhost stores open and close on disk) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &e.to_string(),
        )
    })
}

// ----- users -----

/// `GET /api/users`.
async fn list_users(State(shared): State<Arc<Shared>>) -> Answer {
    Ok(Json(shared.access.users()).into_response())
}

/// `GET /api/users/{name}`.
async fn get_user(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Answer {
    let user = shared
        .access
        .users()
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(not_found)?;
    Ok(Json(user).into_response())
}

/// The body of `PUT /api/users/{name}`: `password` (hashed here) or `password_hash` (with
/// `hashing_algorithm`, SHA-256 by default), and `tags`.
#[derive(Debug, Deserialize)]
struct UserBody {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Tags,
}

/// `PUT /api/users/{name}`.
async fn put_user(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Answer {
    let b: UserBody = body(&bytes)?;
    let hash = match (b.password, b.password_hash) {
        (Some(password), None) => PasswordHash::new(&password),
        (None, Some(hash)) => {
            let algorithm = b
                .hashing_algorithm
                .as_deref()
                .unwrap_or("rabbit_password_hashing_sha256");
            PasswordHash::from_base64(algorithm, &hash).map_err(bad_request)?
        }
        _ => {
            return Err(bad_request(
                "give exactly one of 'password' and 'password_hash'",
            ));
        }
    };
    if name.is_empty() {
        return Err(bad_request("a user name cannot be empty"));
    }
    let created = shared.access.user(&name).is_none();
    let record = UserRecord {
        hash,
        tags: b.tags.0,
    };
    shared.access.put_user(&name, record).map_err(bad_request)?;
    Ok(created_or_no_content(created).into_response())
}

/// `DELETE /api/users/{name}`: the user's connections are closed, as RabbitMQ closes them.
async fn delete_user(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Answer {
    let existed = shared.access.delete_user(&name);
    if existed == Ok(true) {
        let _closed = shared.registry.close_where(|c| c.user == name);
    }
    deleted(existed)
}

// ----- vhosts -----

/// `PUT /api/vhosts/{name}` (the body, RabbitMQ's description and tags, is not kept).
async fn put_vhost(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Answer {
    let access = shared.access.clone();
    let created = blocking(move || access.add_vhost(&name))
        .await?
        .map_err(bad_request)?;
    Ok(created_or_no_content(created).into_response())
}

/// `DELETE /api/vhosts/{name}`: its connections are closed, its queues and messages deleted.
async fn delete_vhost(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Answer {
    let access = shared.access.clone();
    let vhost = name.clone();
    let existed = blocking(move || access.delete_vhost(&vhost)).await?;
    if existed == Ok(true) {
        let _closed = shared.registry.close_where(|c| c.vhost == name);
    }
    deleted(existed)
}

// ----- permissions -----

/// `GET /api/permissions`.
async fn list_permissions(State(shared): State<Arc<Shared>>) -> Answer {
    Ok(Json(shared.access.permissions()).into_response())
}

/// `GET /api/permissions/{vhost}/{user}`.
async fn get_permission(
    State(shared): State<Arc<Shared>>,
    Path((vhost, user)): Path<(String, String)>,
) -> Answer {
    let permission = shared
        .access
        .permissions()
        .into_iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .ok_or_else(not_found)?;
    Ok(Json(permission).into_response())
}

#[derive(Debug, Deserialize)]
struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

/// `PUT /api/permissions/{vhost}/{user}`.
async fn put_permission(
    State(shared): State<Arc<Shared>>,
    Path((vhost, user)): Path<(String, String)>,
    bytes: Bytes,
) -> Answer {
    let b: PermissionBody = body(&bytes)?;
    let permission = Permission::new(&b.configure, &b.write, &b.read).map_err(bad_request)?;
    let created = shared.access.permission(&vhost, &user).is_none();
    shared
        .access
        .set_permission(&vhost, &user, permission)
        .map_err(bad_request)?;
    Ok(created_or_no_content(created).into_response())
}

/// `DELETE /api/permissions/{vhost}/{user}`.
async fn delete_permission(
    State(shared): State<Arc<Shared>>,
    Path((vhost, user)): Path<(String, String)>,
) -> Answer {
    deleted(shared.access.clear_permission(&vhost, &user))
}

// ----- definitions -----

/// `GET /api/definitions`: everything, as `rabbitmqctl export_definitions` writes it.
async fn export_all(State(shared): State<Arc<Shared>>) -> Answer {
    Ok(Json(shared.access.export(None)).into_response())
}

/// `GET /api/definitions/{vhost}`: one vhost's exchanges, queues and bindings.
async fn export_vhost(State(shared): State<Arc<Shared>>, Path(vhost): Path<String>) -> Answer {
    if shared.access.vhost(&vhost).is_none() {
        return Err(not_found());
    }
    Ok(Json(shared.access.export(Some(&vhost))).into_response())
}

/// `POST /api/definitions`: imports a definitions document.
async fn import_all(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Answer {
    import(shared, None, bytes).await
}

/// `POST /api/definitions/{vhost}`: imports exchanges, queues and bindings into one vhost.
async fn import_vhost(
    State(shared): State<Arc<Shared>>,
    Path(vhost): Path<String>,
    bytes: Bytes,
) -> Answer {
    if shared.access.vhost(&vhost).is_none() {
        return Err(not_found());
    }
    import(shared, Some(vhost), bytes).await
}

async fn import(shared: Arc<Shared>, vhost: Option<String>, bytes: Bytes) -> Answer {
    let doc = Document::parse(&bytes).map_err(bad_request)?;
    let access = shared.access.clone();
    blocking(move || access.import(&doc, vhost.as_deref()))
        .await?
        .map_err(bad_request)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
