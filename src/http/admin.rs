//! The admin listener: `/healthz` (the process is up), `/readyz` (every set
//! has an active key for each of its algorithms and the store answers) and
//! `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::Shared;

/// The admin router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let mut problems = Vec::new();
    let snapshot = shared.keyring.snapshot();
    for policy in shared.scheduler.policies().iter() {
        for alg in &policy.algorithms {
            let has = snapshot
                .sets
                .get(&policy.name)
                .is_some_and(|s| s.signers.contains_key(alg));
            if !has {
                problems.push(format!("set {} has no active {alg} key", policy.name));
            }
        }
    }
    if let Err(e) = shared.store.ping().await {
        tracing::warn!(error = %e, "readiness: store does not answer");
        problems.push("store does not answer".to_owned());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.metrics.render(&shared);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
