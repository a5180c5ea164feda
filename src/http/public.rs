//! Public JWKS: `/.well-known/jwks.json` (the set named `default`) and
//! `/jwks/<set>.json`. Answers come from the in-memory snapshot only: the
//! bytes and ETag were computed once per key change, so every replica with
//! the same keys serves the same bytes, and a store outage changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::Full;

use super::paths::{DEFAULT_SET_PATH, NAMED_SET_ROUTE};
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::state::Shared;

/// What the public handlers read: the served snapshot, and the counters.
#[derive(Clone)]
struct JwksState {
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
}

/// The public router. GET routes answer HEAD with the same headers.
pub fn router(shared: &Shared) -> Router {
    let state = JwksState {
        keyring: shared.keyring.clone(),
        metrics: shared.metrics.clone(),
    };
    Router::new()
        .route(DEFAULT_SET_PATH, get(default_set))
        .route(NAMED_SET_ROUTE, get(named_set))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .with_state(state)
}

async fn default_set(State(state): State<JwksState>, headers: HeaderMap) -> Response {
    serve_set(&state, "default", &headers)
}

async fn named_set(
    State(state): State<JwksState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    match file.strip_suffix(".json") {
        Some(set) => serve_set(&state, set, &headers),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "key sets are served as /jwks/<set>.json",
        ),
    }
}

/// The hot path: the 200 or 304 answer of a set that has keys, or `None` (unknown set, or no
/// keys yet: the router answers those). One snapshot `Arc` clone, one map
/// lookup by `&str`, refcount clones of the precomputed body and header
/// values; nothing is formatted, validated or copied per request.
fn jwks_answer(state: &JwksState, set: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let snapshot = state.keyring.snapshot();
    // Sets in the snapshot are exactly the policies' sets, and a name that
    // is not a valid set name is in no map.
    let view = snapshot.sets.get(set)?;
    let (Some(doc), Some(precomputed)) = (&view.jwks, &view.headers) else {
        return None;
    };
    state.metrics.jwks_requests.inc();
    let not_modified = if_none_match(headers, &doc.etag);
    let mut response = if not_modified {
        state.metrics.jwks_not_modified.inc();
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(doc.bytes.clone()))
    };
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, precomputed.cache_control.clone());
    out.insert(header::ETAG, precomputed.etag.clone());
    if !not_modified {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Explicit, so that HEAD carries GET's length too.
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(doc.bytes.len()));
    }
    Some(response)
}

fn serve_set(state: &JwksState, set: &str, headers: &HeaderMap) -> Response {
    if let Some(r) = jwks_answer(state, set, headers) {
        return r.map(Body::new);
    }
    state.metrics.jwks_requests.inc();
    match state.keyring.snapshot().sets.get(set) {
        None => error(StatusCode::NOT_FOUND, "not_found", "no such key set"),
        Some(_) => {
            // Never an empty key list: a verifier would cache it and reject
            // every assertion until it refetched.
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "this key set has no keys yet; retry shortly",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

/// RFC 9110 §13.1.2: a list of entity tags or `*`; weak comparison applies
/// to If-None-Match, so `W/"x"` matches `"x"`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// A JSON error answer `{"error": code, "message": text}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (status, axum::Json(body)).into_response()
}
