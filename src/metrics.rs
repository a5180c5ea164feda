//! Prometheus metrics of the daemon, exported on the admin listener.
//! Counters are bumped where things happen; gauges about keys (age, seconds
//! until the next transition) are computed from the snapshot at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use chrono::{DateTime, Utc};

use crate::audit::writer::AuditMetrics;
use crate::config::policy::Policies;
use crate::lifecycle::model::StoredKey;
use crate::lifecycle::plan::earliest_activation;
use crate::types::KeyState;

/// Labels of a signature request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignLabels {
    pub set: String,
    pub alg: String,
    pub client: String,
    pub outcome: String,
}

/// Labels of suppressed refusal records: why they were left out
/// (`uid_budget` or `spool_full`). Never a caller's uid or text: a label
/// value per caller would let callers mint series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SuppressedLabels {
    pub why: String,
}

/// Labels of per-key-slot gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    pub set: String,
    pub alg: String,
}

/// Labels of a key backend's metrics: its name (`software` or a
/// `[backends.NAME]` table), from the config, never from a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Signature requests by set, alg, client and outcome.
    pub signatures: Family<SignLabels, Counter>,
    /// Time to sign one assertion (seconds), socket request to answer.
    pub sign_seconds: Histogram,
    /// JWKS requests, and those answered 304.
    pub jwks_requests: Counter,
    pub jwks_not_modified: Counter,
    /// Time one lifecycle tick took (seconds), key generation included
    /// when the tick generated a key.
    pub tick_seconds: Histogram,
    /// Lifecycle ticks that failed (each is retried with backoff).
    pub transition_failures: Counter,
    /// Store calls that failed.
    pub store_errors: Counter,
    /// 1 on the replica that runs lifecycle transitions.
    pub leader: Gauge,
    /// The audit writer's batches (handed to it at start).
    pub audit: AuditMetrics,
    /// Refusals counted instead of recorded one by one: a uid over
    /// `store.audit_refusals_per_minute` (`socket::refusals`).
    pub refusals_over_budget: Counter,
    key_age: Family<SlotLabels, Gauge>,
    next_transition: Family<SlotLabels, Gauge>,
    /// The token broker's (DESIGN §6).
    pub tokens: TokenMetrics,
    /// 1 while a token backend is connected and logged in, 0 while it is
    /// out of reach (signing on it answers 503).
    pub backend_up: Family<BackendLabels, Gauge>,
    /// Signatures a key backend could not make (token errors).
    pub backend_errors: Family<BackendLabels, Counter>,
}

impl Metrics {
    /// Sets `jwksd_backend_up` for `backend`.
    pub fn backend_up(&self, backend: &str, up: bool) {
        self.backend_up
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Counts a signature `backend` could not make.
    pub fn backend_error(&self, backend: &str) {
        self.backend_errors
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .inc();
    }
}

/// Labels of the token cache's counter: `result` is `hit`, `miss` or
/// `refresh`; `client` comes from the policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenCacheLabels {
    pub client: String,
    pub result: String,
}

/// Labels of failed upstream token calls: `error` is an RFC 6749 error
/// code, `other_oauth_error`, or one of jwksd's own kinds (`timeout`,
/// `connect`, `too_large`, `bad_answer`, `http_<status>`, `assertion`):
/// never text an endpoint chose.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenErrorLabels {
    pub client: String,
    pub error: String,
}

/// The token broker's metrics. Never a token, never a caller's text.
#[derive(Clone)]
pub struct TokenMetrics {
    /// Token requests answered from the cache, by fetching, and the
    /// background refreshes.
    pub cache: Family<TokenCacheLabels, Counter>,
    /// Upstream calls that gave no token.
    pub upstream_errors: Family<TokenErrorLabels, Counter>,
    /// Time of one upstream call (seconds), signing included.
    pub upstream_seconds: Histogram,
}

impl TokenMetrics {
    fn new() -> Self {
        TokenMetrics {
            cache: Family::default(),
            upstream_errors: Family::default(),
            upstream_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }

    /// Counts a request answered as `result` for `client`.
    pub fn cache(&self, client: &str, result: &str) {
        self.cache
            .get_or_create(&TokenCacheLabels {
                client: client.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a failed upstream call.
    pub fn upstream_error(&self, client: &str, error: &str) {
        self.upstream_errors
            .get_or_create(&TokenErrorLabels {
                client: client.to_owned(),
                error: error.to_owned(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let signatures = Family::<SignLabels, Counter>::default();
        registry.register(
            "jwksd_signatures",
            "Signature requests by outcome",
            signatures.clone(),
        );
        let sign_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "jwksd_sign_seconds",
            "Time to answer a signature request",
            sign_seconds.clone(),
        );
        let jwks_requests = Counter::default();
        registry.register(
            "jwksd_jwks_requests",
            "JWKS requests",
            jwks_requests.clone(),
        );
        let jwks_not_modified = Counter::default();
        registry.register(
            "jwksd_jwks_not_modified",
            "JWKS requests answered 304",
            jwks_not_modified.clone(),
        );
        let tick_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "jwksd_tick_seconds",
            "Time one lifecycle tick took",
            tick_seconds.clone(),
        );
        let transition_failures = Counter::default();
        registry.register(
            "jwksd_transition_failures",
            "Lifecycle ticks that failed",
            transition_failures.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "jwksd_store_errors",
            "Store calls that failed",
            store_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "jwksd_leader",
            "1 where this replica runs lifecycle transitions",
            leader.clone(),
        );
        let suppressed = Family::<SuppressedLabels, Counter>::default();
        registry.register(
            "jwksd_audit_refusals_suppressed",
            "Refused requests not recorded one by one: over the uid's budget (summarised in one record), or the store down and the spool past its refusal room",
            suppressed.clone(),
        );
        let why = |why: &str| {
            suppressed
                .get_or_create(&SuppressedLabels {
                    why: why.to_owned(),
                })
                .clone()
        };
        let refusals_over_budget = why("uid_budget");
        let audit = AuditMetrics {
            refusals_dropped: why("spool_full"),
            ..AuditMetrics::default()
        };
        registry.register(
            "jwksd_audit_write_seconds",
            "Time to make one batch of audit records durable",
            audit.write_seconds.clone(),
        );
        registry.register(
            "jwksd_audit_batch_entries",
            "Audit records per durable write (requests sharing one fsync)",
            audit.batch_entries.clone(),
        );
        let key_age = Family::<SlotLabels, Gauge>::default();
        registry.register(
            "jwksd_active_key_age_seconds",
            "Seconds since the active key activated",
            key_age.clone(),
        );
        let next_transition = Family::<SlotLabels, Gauge>::default();
        registry.register(
            "jwksd_next_transition_seconds",
            "Seconds until the pending key may activate",
            next_transition.clone(),
        );
        let backend_up = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "jwksd_backend_up",
            "1 while a key backend (PKCS#11 token) is connected and logged in",
            backend_up.clone(),
        );
        let backend_errors = Family::<BackendLabels, Counter>::default();
        registry.register(
            "jwksd_backend_errors",
            "Signatures a key backend could not make",
            backend_errors.clone(),
        );
        let tokens = TokenMetrics::new();
        registry.register(
            "jwksd_token_cache",
            "Token requests by client and result (hit, miss, refresh)",
            tokens.cache.clone(),
        );
        registry.register(
            "jwksd_token_upstream_errors",
            "Upstream token calls that gave no token, by client and error",
            tokens.upstream_errors.clone(),
        );
        registry.register(
            "jwksd_token_upstream_seconds",
            "Time of one upstream token call, signing included",
            tokens.upstream_seconds.clone(),
        );
        Metrics {
            registry,
            tokens,
            signatures,
            sign_seconds,
            jwks_requests,
            jwks_not_modified,
            tick_seconds,
            transition_failures,
            store_errors,
            leader,
            audit,
            refusals_over_budget,
            key_age,
            next_transition,
            backend_up,
            backend_errors,
        }
    }
}

impl Metrics {
    /// Counts one signature request.
    pub fn signature(&self, set: &str, alg: &str, client: &str, outcome: &str) {
        self.signatures
            .get_or_create(&SignLabels {
                set: set.to_owned(),
                alg: alg.to_owned(),
                client: client.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Creates the `ok` series of every (set, alg, client) the policies
    /// allow, so dashboards and alerts see zeros instead of missing series.
    pub fn prime(&self, policies: &Policies) {
        for p in policies.iter() {
            for alg in &p.algorithms {
                for c in &p.clients {
                    let _ = self.signatures.get_or_create(&SignLabels {
                        set: p.name.to_string(),
                        alg: alg.to_string(),
                        client: c.client_id.clone(),
                        outcome: "ok".to_owned(),
                    });
                }
            }
        }
    }

    /// The Prometheus text exposition at `now`, the key gauges computed
    /// from `keys` (what this replica serves) under `policies`.
    pub fn render(&self, now: DateTime<Utc>, keys: &[StoredKey], policies: &Policies) -> String {
        for k in keys {
            let labels = SlotLabels {
                set: k.set.to_string(),
                alg: k.alg.to_string(),
            };
            match k.state {
                KeyState::Active => {
                    let since = k.activate_at.unwrap_or(k.publish_at);
                    self.key_age
                        .get_or_create(&labels)
                        .set((now - since).num_seconds());
                }
                KeyState::Pending => {
                    if let Some(p) = policies.get(&k.set) {
                        let at = earliest_activation(p, k);
                        self.next_transition
                            .get_or_create(&labels)
                            .set((at - now).num_seconds());
                    }
                }
                _ => {}
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
