//! The server side of object transfers: `GET`/`PUT /objects/{id}` (a `GET` may ask for one byte
//! range, so that a large object comes in parallel pieces from every holder) and
//! `POST /objects/{id}/adopt` (answered with the segment's path from then on) on a worker's HTTP
//! port, guarded by the cluster token, checked before any body is read.

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

async fn get_object(State(routes): Routes, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    let id = ObjectId(id);
    match routes.store.get(id).await {
        Ok(Some(value)) => match headers.get(header::RANGE) {
            None => value.into_response(),
            Some(range) => match byte_range(range.as_bytes(), value.len()) {
                // A slice of the stored bytes, sent without a copy.
                Some((start, end)) => (
                    StatusCode::PARTIAL_CONTENT,
                    [(
                        header::CONTENT_RANGE,
                        format!("bytes {start}-{}/{}", end - 1, value.len()),
                    )],
                    value.slice(start..end),
                )
                    .into_response(),
                None => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{}", value.len()))],
                    format!(
                        "object {id} has {} bytes; the range asked for is not one of them\n",
                        value.len()
                    ),
                )
                    .into_response(),
            },
        },
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

/// The one range `bytes=FIRST-LAST` (inclusive, as HTTP has it) of an object of `len` bytes, as
/// `start..end`; `None` when the header asks for anything else or for bytes past the end.
fn byte_range(header: &[u8], len: usize) -> Option<(usize, usize)> {
    let spec = std::str::from_utf8(header).ok()?.strip_prefix("bytes=")?;
    let (first, last) = spec.trim().split_once('-')?;
    let first: usize = first.parse().ok()?;
    let last: usize = last.parse().ok()?;
    (first <= last && last < len).then_some((first, last + 1))
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

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn one_inclusive_byte_range_within_the_object_is_understood() {
        assert_eq!(byte_range(b"bytes=0-99", 100), Some((0, 100)));
        assert_eq!(byte_range(b"bytes=10-19", 100), Some((10, 20)));
        assert_eq!(byte_range(b"bytes=99-99", 100), Some((99, 100)));
        for refused in [
            &b"bytes=0-100"[..], // past the end
            b"bytes=20-10",
            b"bytes=-10", // suffix ranges are not asked for by our client
            b"bytes=10-",
            b"bytes=0-1,4-5",
            b"items=0-1",
            b"bytes=x-y",
        ] {
            assert_eq!(byte_range(refused, 100), None, "{refused:?}");
        }
    }
}
