//! What the socket handlers may touch, taken from the daemon's `Shared`
//! once, when the router is built.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::writer::Auditor;
use crate::clock::Clock;
use crate::config::live::LivePolicies;
use crate::http::paths::PublicUrl;
use crate::keyring::Keyring;
use crate::lifecycle::executor::Executor;
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::store::Store;
use crate::tokens::cache::TokenCache;
use crate::tokens::upstream::Upstream;
use crate::workers::signing_pool::SigningPool;

use super::limits::CallerLimits;
use super::refusals::RefusalGate;

/// The socket router's state: cheap to clone (handles only).
#[derive(Clone)]
pub struct SocketState {
    pub policies: LivePolicies,
    pub clock: Arc<dyn Clock>,
    pub keyring: Arc<Keyring>,
    pub auditor: Auditor,
    pub metrics: Arc<Metrics>,
    pub signers: Arc<SigningPool>,
    pub lifecycle: Arc<Executor>,
    pub store: Arc<dyn Store>,
    pub public_url: PublicUrl,
    /// Per-caller bounds from the policies' `[[callers]]`: the socket's
    /// own state, not shared with any other server.
    pub limits: Arc<CallerLimits>,
    /// Per-uid budgets of refusal records.
    pub refusals: Arc<RefusalGate>,
    /// `server.request_timeout`: from a request's headers to its answer.
    pub request_timeout: Duration,
    /// The token broker's cache and upstream client.
    pub tokens: Arc<TokenCache>,
    pub upstream: Upstream,
}

impl SocketState {
    pub fn new(shared: &Shared, request_timeout: Duration) -> Self {
        SocketState {
            policies: shared.policies.clone(),
            clock: shared.clock.clone(),
            keyring: shared.keyring.clone(),
            auditor: shared.auditor.clone(),
            metrics: shared.metrics.clone(),
            signers: shared.signers.clone(),
            lifecycle: shared.lifecycle.clone(),
            store: shared.store.clone(),
            public_url: shared.public_url.clone(),
            limits: Arc::default(),
            refusals: shared.refusals.clone(),
            request_timeout,
            tokens: shared.tokens.clone(),
            upstream: shared.upstream.clone(),
        }
    }
}
