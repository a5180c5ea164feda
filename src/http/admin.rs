//! The admin listener: `/healthz` (the process is up), `/readyz` (every set
//! has an active key for each of its algorithms, every key backend is
//! connected, and the store answers),
//! `/metrics` (Prometheus text) and `/status` (an HTML page for people).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::clock::Clock;
use crate::config::live::LivePolicies;
use crate::config::policy::Policy;
use crate::keyring::Keyring;
use crate::keys::backend::Backends;
use crate::keys::pkcs11::Health;
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
    backends: Arc<Backends>,
}

/// The admin router.
pub fn router(shared: &Shared) -> Router {
    let state = AdminState {
        keyring: shared.keyring.clone(),
        policies: shared.policies.clone(),
        store: shared.store.clone(),
        metrics: shared.metrics.clone(),
        clock: shared.clock.clone(),
        backends: shared.backends.clone(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
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
    let policies = state.policies.current();
    for token in state.backends.tokens() {
        let sets: Vec<&str> = policies
            .iter()
            .filter(|p| p.backend == token.name())
            .map(|p| p.name.as_str())
            .collect();
        // A token no policy uses (yet, or any more) signs nothing: its
        // trouble is logged and on `jwksd_backend_up`, not a reason to take
        // this replica out of service.
        if sets.is_empty() {
            continue;
        }
        if let Health::Down { reason, since } = token.health() {
            let since = chrono::DateTime::<chrono::Utc>::from(since)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            problems.push(format!(
                "backend {} is down since {since}: {reason} (signing answers 503 for sets: {})",
                token.name(),
                sets.join(", ")
            ));
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

async fn status(State(state): State<AdminState>) -> Response {
    let head = match state.store.audit_tail(1).await {
        Ok(records) => records.first().map(|r| (r.seq, r.hash.clone())),
        Err(e) => {
            tracing::warn!(error = %e, "status page: store does not answer");
            None
        }
    };
    let snapshot = state.keyring.snapshot();
    let policies = state.policies.current();
    let sets: Vec<&Policy> = policies.iter().map(|p| p.as_ref()).collect();
    let body = super::status::page(&sets, &snapshot.keys, state.clock.now(), head);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page has no scripts and loads nothing: say so to browsers.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        body,
    )
        .into_response()
}
