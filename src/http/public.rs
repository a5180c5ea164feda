//! Public JWKS: `/.well-known/jwks.json` (the set named `default`) and
//! `/jwks/<set>.json`. Answers come from the in-memory snapshot only: the
//! bytes and ETag were computed once per key change, so every replica with
//! the same keys serves the same bytes, and a store outage changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::daemon::Shared;
use crate::types::SetName;

/// The public router. GET routes answer HEAD with the same headers.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(default_set))
        .route("/jwks/{file}", get(named_set))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .with_state(shared)
}

async fn default_set(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    serve_set(&shared, "default", &headers)
}

async fn named_set(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    match file.strip_suffix(".json") {
        Some(set) => serve_set(&shared, set, &headers),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "key sets are served as /jwks/<set>.json",
        ),
    }
}

fn serve_set(shared: &Shared, set: &str, headers: &HeaderMap) -> Response {
    shared.metrics.jwks_requests.inc();
    let Ok(name) = SetName::new(set) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such key set");
    };
    let snapshot = shared.keyring.snapshot();
    let policies = shared.scheduler.policies();
    let (Some(view), Some(policy)) = (snapshot.sets.get(&name), policies.get(&name)) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such key set");
    };
    let Some(doc) = &view.jwks else {
        // Never an empty key list: a verifier would cache it and reject
        // every assertion until it refetched.
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this key set has no keys yet; retry shortly",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let cache = format!("public, max-age={}", policy.jwks_max_age.as_secs());
    let mut out_headers = HeaderMap::new();
    out_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cache).unwrap_or(HeaderValue::from_static("public")),
    );
    if let Ok(etag) = HeaderValue::from_str(&doc.etag) {
        out_headers.insert(header::ETAG, etag);
    }
    if if_none_match(headers, &doc.etag) {
        shared.metrics.jwks_not_modified.inc();
        return (StatusCode::NOT_MODIFIED, out_headers).into_response();
    }
    out_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, out_headers, doc.bytes.clone()).into_response()
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
