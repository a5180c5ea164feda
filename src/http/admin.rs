//! The admin listener: `/healthz` (the process is up), `/readyz` (every set
//! has an active key for each of its algorithms and the store answers) and
//! `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::clock::Clock;
use crate::config::live::LivePolicies;
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::store::Store;

/// What the admin handlers read.
#[derive(Clone)]
struct AdminState {
    keyring: Arc<Keyring>,
    policies: LivePolicies,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

/// The admin router.
pub fn router(shared: &Shared) -> Router {
    let state = AdminState {
        keyring: shared.keyring.clone(),
        policies: shared.policies.clone(),
        store: shared.store.clone(),
        metrics: shared.metrics.clone(),
        clock: shared.clock.clone(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let mut problems = Vec::new();
    let snapshot = state.keyring.snapshot();
    for policy in state.policies.current().iter() {
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
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: store does not answer");
        problems.push("store does not answer".to_owned());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let snapshot = state.keyring.snapshot();
    let body = state
        .metrics
        .render(state.clock.now(), &snapshot.keys, &state.policies.current());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
