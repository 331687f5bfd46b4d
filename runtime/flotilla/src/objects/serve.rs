//! The server side of object transfers: `GET`/`PUT /objects/{id}` and `POST /objects/{id}/adopt`
//! (answered with the segment's path from then on) on a worker's HTTP port, guarded by the
//! cluster token, checked before any body is read.

use std::sync::Arc;

use axum::{
    extract::{Path, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use flotilla_core::ObjectId;

use super::{shm, store::ObjectStore};

/// What the object routes serve from, and the `Authorization` value they require.
struct ObjectRoutes {
    store: Arc<ObjectStore>,
    bearer: Option<String>,
}

type Routes = State<Arc<ObjectRoutes>>;

/// The object routes of a worker's HTTP port.
pub fn object_router(store: Arc<ObjectStore>, token: Option<&str>) -> Router {
    let routes = Arc::new(ObjectRoutes {
        store,
        bearer: token.map(|t| format!("Bearer {t}")),
    });
    Router::new()
        .route("/objects/{id}", get(get_object).put(put_object))
        .route("/objects/{id}/adopt", post(adopt_object))
        // The token is checked before any body is read.
        .route_layer(axum::middleware::from_fn_with_state(
            routes.clone(),
            require_token,
        ))
        // Objects are as large as the store allows; the cap applies there.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(routes)
}

async fn require_token(State(routes): Routes, request: Request, next: Next) -> Response {
    if authorized(routes.bearer.as_deref(), request.headers()) {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "missing or wrong cluster token\n").into_response()
    }
}

fn authorized(expected: Option<&str>, headers: &HeaderMap) -> bool {
    match expected {
        None => true,
        Some(e) => headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| flotilla_proto::auth::same(v.as_bytes(), e.as_bytes())),
    }
}

async fn get_object(State(routes): Routes, Path(id): Path<u64>) -> Response {
    let id = ObjectId(id);
    match routes.store.get(id).await {
        Ok(Some(value)) => value.into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("object {id} is not in this worker's store\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading object {id}: {e}\n"),
        )
            .into_response(),
    }
}

async fn adopt_object(
    State(routes): Routes,
    Path(id): Path<u64>,
    body: String,
) -> (StatusCode, String) {
    let id = ObjectId(id);
    let segment = std::path::PathBuf::from(body.trim());
    if !shm::is_segment(&segment) {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "{} is not a flotilla shared-memory segment\n",
                segment.display()
            ),
        );
    }
    match routes.store.adopt_segment(id, segment).await {
        Ok(path) => (StatusCode::OK, path.to_string_lossy().into_owned()),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("mapping object {id}: {e}\n"),
        ),
    }
}

async fn put_object(
    State(routes): Routes,
    Path(id): Path<u64>,
    body: Bytes,
) -> (StatusCode, String) {
    let id = ObjectId(id);
    match routes.store.put(id, body).await {
        Ok(()) => (StatusCode::OK, String::new()),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storing object {id}: {e}\n"),
        ),
    }
}
