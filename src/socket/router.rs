//! The socket's routes: which handler answers which request.

use axum::Router;
use axum::routing::{get, post};

use super::error::ApiError;
use super::state::SocketState;
use super::{admin, assertions, keys, timeline, tokens};
use crate::state::Shared;

/// The socket router, with its own state taken from `shared`.
pub fn router(shared: &Shared) -> Router {
    Router::new()
        .route("/v1/assertions", post(assertions::create))
        .route("/v1/tokens", post(tokens::create).delete(tokens::forget))
        .route("/v1/keys", get(keys::list))
        .route("/v1/keys/timeline", get(timeline::draw))
        .route("/v1/admin/rotate", post(admin::rotate))
        .route("/v1/admin/revoke", post(admin::revoke))
        .route("/v1/audit", get(admin::audit_tail))
        .route("/v1/audit/verify", get(admin::audit_verify))
        .route("/v1/audit/head", get(admin::audit_head))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        // A known path with another method is no endpoint either: answered
        // in the one error shape (axum's default is a bare 405).
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::not_found(format!("no such endpoint for method {method}"))
        })
        .with_state(SocketState::new(shared))
}
