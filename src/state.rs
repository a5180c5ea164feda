//! [`Shared`]: the handles the daemon builds once and hands out. Each
//! router builds its own state from it, taking only what it uses, so a
//! handler's signature says what it can touch; nothing here does any work.

use std::sync::Arc;

use crate::audit::writer::Auditor;
use crate::clock::Clock;
use crate::config::live::LivePolicies;
use crate::http::paths::PublicUrl;
use crate::keyring::Keyring;
use crate::keys::backend::Backends;
use crate::lifecycle::executor::Executor;
use crate::metrics::Metrics;
use crate::socket::refusals::RefusalGate;
use crate::store::Store;
use crate::tokens::cache::TokenCache;
use crate::tokens::upstream::Upstream;
use crate::workers::signing_pool::SigningPool;

/// Every handle a server or the lease loop may need. Cloning it clones the
/// handles (reference counts), never what they point to.
#[derive(Clone)]
pub struct Shared {
    /// The policies in force (replaced whole by a reload).
    pub policies: LivePolicies,
    /// The injected clock: `GuardedClock::system()` in the daemon.
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    /// What this replica serves: JWKS bytes and the active signing keys.
    pub keyring: Arc<Keyring>,
    /// The audit writer. Its task ends when the last clone is dropped.
    pub auditor: Auditor,
    pub metrics: Arc<Metrics>,
    /// The RSA signing threads, one per core (`workers::signing_pool`).
    pub signers: Arc<SigningPool>,
    /// The one path of every key change (ticks and admin calls).
    pub lifecycle: Arc<Executor>,
    /// `server.public_url`, for `jku` headers.
    pub public_url: PublicUrl,
    /// Per-uid budgets of refusal records (`socket::refusals`).
    pub refusals: Arc<RefusalGate>,
    /// The token broker's cache (each replica keeps its own).
    pub tokens: Arc<TokenCache>,
    /// The client of token endpoints (`[tokens]`).
    pub upstream: Upstream,
    /// `software` and the PKCS#11 tokens of `[backends.NAME]`.
    pub backends: Arc<Backends>,
}
