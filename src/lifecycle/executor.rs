//! Carries out what `plan` decides. Every change to the keys goes through
//! one path ([`Executor::apply`]): one store transaction that re-checks its
//! precondition, then the log line and the events of what it did. Ticks,
//! `rotate`, `rotate --now`, `revoke` and the reschedule after a policy
//! reload differ only in how they pick their change, and picking is `plan`'s.
//!
//! Owns: generating keys off the async runtime and sealing them, and
//! serializing this process's lifecycle work (one operation at a time;
//! across replicas the store's re-checks keep transitions correct). Does
//! not own: deciding (`plan`), when to tick (the daemon's lease loop), or
//! what is served (the keyring follows the store).

use std::sync::Arc;

use serde::Serialize;

use super::handover::Handover;
use super::model::{Applied, Change, Event, EventKind, StoredKey};
use super::orphans::DESTROY_AFTER;
use super::plan::{self, GenerateReason, GeneratedRow, NewKey, Refusal, Step};
use crate::clock::Clock;
use crate::config::live::LivePolicies;
use crate::config::policy::Policy;
use crate::config::policy::SOFTWARE_BACKEND;
use crate::jose::{Jwk, thumbprint};
use crate::keys::KeyError;
use crate::keys::backend::{KeyBackends, PrivateHalf};
use crate::keys::seal::MasterKey;
use crate::store::{Store, StoreError};
use crate::types::{Alg, KeyState, Kid, SetName};
use crate::workers::background;

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key generation failed: {0}")]
    Keys(#[from] KeyError),
    #[error("sealing the new key failed: {0}")]
    Seal(String),
    #[error("no key set named {0:?}")]
    UnknownSet(String),
    #[error("set {set} does not use {alg}")]
    AlgNotInSet { set: String, alg: Alg },
    #[error("no key with kid {0:?}")]
    UnknownKid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("key generation task failed: {0}")]
    Join(String),
}

impl From<Refusal> for LifecycleError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::UnknownKid(kid) => LifecycleError::UnknownKid(kid),
            other => LifecycleError::Conflict(other.to_string()),
        }
    }
}

/// What `rotate` did to one algorithm of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotateOutcome {
    pub set: SetName,
    pub alg: Alg,
    pub activated: Option<Kid>,
    pub deactivated: Option<Kid>,
    pub pending: Option<Kid>,
    /// With `now`: how long the new signer has been published and until
    /// when caching verifiers may refuse it.
    pub handover: Option<Handover>,
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevokeOutcome {
    pub kid: Kid,
    pub set: SetName,
    pub alg: Alg,
    pub activated: Option<Kid>,
    /// When the revoked key was the signer: its successor's hand-over.
    pub handover: Option<Handover>,
}

/// Why a change is made; the log says it next to what the change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A transition that came due (tick).
    Due,
    /// A key generated for this reason (tick).
    Generated(GenerateReason),
    /// `keys rotate` without `--now`.
    Rotate,
    /// `keys rotate --now`.
    RotateNow,
    /// `keys revoke`.
    Revoke,
    /// A policy reload moved a pending key to the new schedule.
    Reload,
}

/// Upper bound of plan/apply rounds per tick: a tick converges in a few
/// rounds (retire, activate, generate successor); more means a bug, and the
/// next tick goes on anyway.
const MAX_ROUNDS: usize = 16;

/// Executes lifecycle steps against the store.
pub struct Executor {
    store: Arc<dyn Store>,
    master: Arc<MasterKey>,
    backends: Arc<dyn KeyBackends>,
    clock: Arc<dyn Clock>,
    policies: LivePolicies,
    /// One lifecycle operation at a time in this process; across replicas
    /// the store's re-checks keep transitions correct.
    lock: tokio::sync::Mutex<()>,
}

impl Executor {
    pub fn new(
        store: Arc<dyn Store>,
        master: Arc<MasterKey>,
        backends: Arc<dyn KeyBackends>,
        clock: Arc<dyn Clock>,
        policies: LivePolicies,
    ) -> Self {
        Executor {
            store,
            master,
            backends,
            clock,
            policies,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs every due transition of every set, re-planning after each round
    /// until nothing is due. Returns the events in the order they happened.
    pub async fn tick(&self) -> Result<Vec<Event>, LifecycleError> {
        let _guard = self.lock.lock().await;
        let mut events = Vec::new();
        // A set whose key could not be generated fails the tick (retried
        // with backoff, counted), once every other set has had its turn.
        if let Some(failed) = self.converge(&mut events).await? {
            return Err(failed);
        }
        Ok(events)
    }

    /// The earliest instant at which a tick will have work, over all sets.
    pub async fn next_due(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, LifecycleError> {
        let keys = self.store.live_keys().await?;
        Ok(self
            .policies
            .current()
            .iter()
            .filter_map(|p| plan::next_due(p, &keys))
            .min())
    }

    /// `keys rotate`: with `at_once`, the pending key signs at once
    /// (skipping rule 1, logged) and a new successor is generated before
    /// this returns; without, the pending key is rescheduled to the earliest
    /// time rule 1 allows. Without `alg`, every algorithm of the set
    /// rotates (in the policy's order): after a compromise an operator
    /// replaces the whole set. One outcome per algorithm.
    pub async fn rotate(
        &self,
        set: &SetName,
        alg: Option<Alg>,
        at_once: bool,
    ) -> Result<(Vec<RotateOutcome>, Vec<Event>), LifecycleError> {
        let policies = self.policies.current();
        let policy = policies
            .get(set)
            .ok_or_else(|| LifecycleError::UnknownSet(set.to_string()))?;
        let algs = match alg {
            Some(alg) if !policy.algorithms.contains(&alg) => {
                return Err(LifecycleError::AlgNotInSet {
                    set: set.to_string(),
                    alg,
                });
            }
            Some(alg) => vec![alg],
            None => policy.algorithms.clone(),
        };
        let _guard = self.lock.lock().await;
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(algs.len());
        for alg in algs {
            outcomes.push(self.rotate_alg(policy, alg, at_once, &mut events).await?);
        }
        Ok((outcomes, events))
    }

    /// One algorithm of `rotate` (the caller holds the lock).
    async fn rotate_alg(
        &self,
        policy: &Policy,
        alg: Alg,
        at_once: bool,
        events: &mut Vec<Event>,
    ) -> Result<RotateOutcome, LifecycleError> {
        let set = &policy.name;
        // Bring the set up to date first: there must be an active key and a
        // pending successor to rotate to (a set whose key cannot be made now
        // is logged by `converge`; the plan below then says what is missing).
        self.converge(events).await?;
        let keys = self.store.live_keys().await?;
        let change = plan::rotation(policy, &keys, alg, at_once, self.clock.now())?;
        let pending = change.kid().clone();
        let cause = if at_once {
            Cause::RotateNow
        } else {
            Cause::Rotate
        };
        let applied = self.apply(&keys, change, cause, events).await?;
        if !at_once {
            return Ok(RotateOutcome {
                set: set.clone(),
                alg,
                activated: None,
                deactivated: None,
                pending: Some(pending),
                handover: None,
            });
        }
        let Applied::Done {
            activated,
            deactivated,
        } = applied
        else {
            return Err(LifecycleError::Conflict(format!(
                "rotation of {set}/{alg} raced with another change; try again"
            )));
        };
        // Rule 4: the successor is generated at once (if its backend cannot
        // make it now, the next tick does; the rotation itself is done).
        self.converge(events).await?;
        let live = self.store.live_keys().await?;
        let pending = live
            .iter()
            .find(|k| &k.set == set && k.alg == alg && k.state == KeyState::Pending)
            .map(|k| k.kid.clone());
        let handover = self.handover(policy, &live, activated.as_ref());
        Ok(RotateOutcome {
            set: set.clone(),
            alg,
            activated,
            deactivated,
            pending,
            handover,
        })
    }

    /// The hand-over to `signer` (just activated at once), logged.
    fn handover(
        &self,
        policy: &Policy,
        live: &[StoredKey],
        signer: Option<&Kid>,
    ) -> Option<Handover> {
        let key = live.iter().find(|k| Some(&k.kid) == signer)?;
        let handover = Handover::to(key, policy.jwks_max_age, self.clock.now());
        handover.log();
        Some(handover)
    }

    /// `keys revoke`: out of the JWKS at once, private half destroyed; a
    /// revoked active key hands over to its successor, and a new successor
    /// is generated before this returns.
    pub async fn revoke(&self, kid: &Kid) -> Result<(RevokeOutcome, Vec<Event>), LifecycleError> {
        let _guard = self.lock.lock().await;
        let mut events = Vec::new();
        let keys = self.store.keys().await?;
        let change = plan::revocation(&keys, kid.as_str(), self.clock.now())?;
        let (set, alg) = change
            .target(&keys)
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_string()))?;
        let applied = self
            .apply(&keys, change, Cause::Revoke, &mut events)
            .await?;
        let Applied::Done { activated, .. } = applied else {
            return Err(LifecycleError::Conflict(format!(
                "{kid} changed state meanwhile; look again"
            )));
        };
        self.converge(&mut events).await?;
        let policies = self.policies.current();
        let handover = match policies.get(&set) {
            Some(policy) => {
                let live = self.store.live_keys().await?;
                self.handover(policy, &live, activated.as_ref())
            }
            None => None,
        };
        let outcome = RevokeOutcome {
            kid: kid.clone(),
            set,
            alg,
            activated,
            handover,
        };
        Ok((outcome, events))
    }

    /// After a policy reload: moves pending activations to the new schedule.
    pub async fn reschedule(&self) -> Result<Vec<Event>, LifecycleError> {
        let _guard = self.lock.lock().await;
        let keys = self.store.live_keys().await?;
        let mut events = Vec::new();
        for policy in self.policies.current().iter() {
            for change in plan::reschedule(policy, &keys) {
                self.apply(&keys, change, Cause::Reload, &mut events)
                    .await?;
            }
        }
        Ok(events)
    }

    /// Plans and executes until nothing is due (the caller holds the lock).
    ///
    /// A key that cannot be generated (its token out of reach) stops only
    /// its own set for this call: every other set goes on, so a token that
    /// is down never holds back software sets or emergency commands. The
    /// first such failure is returned as `Some` after everything else ran;
    /// a store failure is an error at once.
    async fn converge(
        &self,
        events: &mut Vec<Event>,
    ) -> Result<Option<LifecycleError>, LifecycleError> {
        let mut failed: Option<LifecycleError> = None;
        let mut stalled: Vec<SetName> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let policies = self.policies.current();
            // Live keys only: retired and revoked keys (one per rotation,
            // forever) never need a step, so a tick every few seconds reads
            // and plans over what can still change, not the whole history.
            let keys = self.store.live_keys().await?;
            let now = self.clock.now();
            let mut did_something = false;
            for policy in policies.iter() {
                if stalled.contains(&policy.name) {
                    continue;
                }
                for step in plan::plan(policy, &keys, now) {
                    let (change, cause) = match step {
                        Step::Apply(change) => (change, Cause::Due),
                        Step::Generate(new) => match self.generate(policy, &new).await {
                            Ok(key) => (Change::Insert(key), Cause::Generated(new.reason)),
                            Err(e @ (LifecycleError::Store(_) | LifecycleError::Join(_))) => {
                                return Err(e);
                            }
                            Err(e) => {
                                tracing::error!(
                                    set = %policy.name, alg = %new.alg, backend = %policy.backend,
                                    error = %e,
                                    "cannot generate a key for this set now; other sets go on, the next tick retries"
                                );
                                stalled.push(policy.name.clone());
                                failed.get_or_insert(e);
                                break;
                            }
                        },
                    };
                    did_something |= self.apply(&keys, change, cause, events).await?.is_done();
                }
            }
            if !did_something {
                break;
            }
        }
        Ok(failed)
    }

    /// Generates the key planned as `new` in the policy's backend (on a
    /// low-priority thread: see `workers::background`), seals it if it is
    /// a software key, and returns its row as of now.
    async fn generate(&self, policy: &Policy, new: &NewKey) -> Result<StoredKey, LifecycleError> {
        let backends = self.backends.clone();
        let (alg, bits, version) = (new.alg, policy.rsa_bits, new.version);
        let (set, backend) = (policy.name.clone(), policy.backend.clone());
        let made = background::run_low_priority("jwksd-keygen", move || {
            let kid_for = |public: &crate::keys::PublicKey| {
                Kid::build(&set, alg, version, &thumbprint(public))
            };
            backends.generate(&backend, alg, bits, &kid_for)
        })
        .await
        .map_err(|e| LifecycleError::Join(e.to_string()))??;
        let jwk = Jwk::from_public(&made.kid, alg, &made.public);
        let public_jwk =
            serde_json::to_string(&jwk).map_err(|e| LifecycleError::Seal(e.to_string()))?;
        let (sealed_private, backend_ref) = match &made.private {
            PrivateHalf::Pkcs8(pkcs8) => {
                let sealed = self
                    .master
                    .seal(&made.kid, pkcs8)
                    .map_err(|e| LifecycleError::Seal(e.to_string()))?;
                (Some(sealed), None)
            }
            PrivateHalf::InToken { reference } => (None, Some(reference.clone())),
        };
        // Time is read after generation: the key is published from the
        // moment it is committed, and rule 1 counts from then.
        let row = GeneratedRow {
            kid: made.kid,
            public_jwk,
            sealed_private,
            backend: policy.backend.clone(),
            backend_ref,
        };
        Ok(plan::new_key(policy, new, row, self.clock.now()))
    }

    /// The one path every change takes: applied in one store transaction
    /// that re-checks its precondition, then logged and turned into events
    /// (with the set's keys right after it). `keys` are the keys the change
    /// was planned from. A stale change (another replica, or an earlier
    /// round, got there first) changes nothing and emits nothing.
    async fn apply(
        &self,
        keys: &[StoredKey],
        change: Change,
        cause: Cause,
        events: &mut Vec<Event>,
    ) -> Result<Applied, LifecycleError> {
        let applied = self.store.apply(&change).await?;
        if let Applied::Stale(why) = &applied {
            tracing::debug!(?change, %why, "transition already done elsewhere");
            // A key made for an insert that lost its race is nobody's: a
            // token object must not outlive it.
            if let Change::Insert(k) = &change
                && k.backend_ref.is_some()
            {
                self.destroy_private(&k.backend, &k.kid).await;
            }
            return Ok(applied);
        }
        let Some((set, alg)) = change.target(keys) else {
            return Ok(applied);
        };
        let happened = change.events(&applied);
        let after = self.set_keys(&set).await?;
        for (kind, kid) in &happened {
            // The store forgot the private half in the transaction just
            // committed; a token still holds it until it is destroyed.
            if matches!(kind, EventKind::Deactivated | EventKind::Revoked)
                && let Some(k) = after.iter().find(|k| &k.kid == kid)
                && k.backend != SOFTWARE_BACKEND
            {
                self.destroy_later(&k.backend, kid);
            }
        }
        let at = self.clock.now();
        for (kind, kid) in happened {
            log_event(kind, &kid, &set, alg, &change, cause);
            events.push(Event {
                at,
                kind,
                set: set.clone(),
                alg,
                kid,
                after: after.clone(),
            });
        }
        Ok(applied)
    }

    /// Destroys `kid`'s private half in `backend` once [`DESTROY_AFTER`]
    /// has passed: every replica (this one's keyring too) follows the
    /// commit and stops signing with it first, so no request finds its
    /// signer gone from the token. A crash meanwhile leaves the object to
    /// the orphan sweep, which destroys it as outlived.
    fn destroy_later(&self, backend: &str, kid: &Kid) {
        let backends = self.backends.clone();
        let (backend, kid) = (backend.to_owned(), kid.clone());
        tokio::spawn(async move {
            tokio::time::sleep(DESTROY_AFTER).await;
            destroy(backends, backend, kid).await;
        });
    }

    /// Destroys `kid`'s private half in `backend` (a no-op for software:
    /// the store erased it). A token that fails now leaves the object to
    /// the orphan sweep, which destroys every object of a key the store no
    /// longer lets sign.
    async fn destroy_private(&self, backend: &str, kid: &Kid) {
        destroy(self.backends.clone(), backend.to_owned(), kid.clone()).await;
    }

    async fn set_keys(&self, set: &SetName) -> Result<Vec<StoredKey>, LifecycleError> {
        Ok(self
            .store
            .keys()
            .await?
            .into_iter()
            .filter(|k| &k.set == set)
            .collect())
    }
}

/// Destroys `kid`'s private half in `backend` on a blocking thread; a
/// failure is logged and left to the orphan sweep.
async fn destroy(backends: Arc<dyn KeyBackends>, backend: String, kid: Kid) {
    let job = {
        let (backend, kid) = (backend.clone(), kid.clone());
        tokio::task::spawn_blocking(move || backends.destroy(&backend, &kid))
    };
    match job.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            %kid, %backend, error = %e,
            "could not destroy the private half in its backend now; the orphan sweep retries"
        ),
        Err(e) => tracing::warn!(%kid, %backend, error = %e, "destroying the private half failed"),
    }
}

/// The one log line of each lifecycle event: a key that signs without
/// having been pre-published (rule 1 skipped) is a warning, everything else
/// is information.
fn log_event(kind: EventKind, kid: &Kid, set: &SetName, alg: Alg, change: &Change, cause: Cause) {
    let emergency = matches!(
        change,
        Change::Activate {
            emergency: true,
            ..
        }
    );
    match (kind, cause) {
        (EventKind::Generated, Cause::Generated(GenerateReason::Bootstrap)) => tracing::warn!(
            %kid, %set, %alg,
            "first key of this set signs at once: nothing to overlap, so pre-publication (rule 1) does not apply"
        ),
        (EventKind::Generated, Cause::Generated(GenerateReason::NoSigner)) => tracing::warn!(
            %kid, %set, %alg,
            "no signing key left (all revoked): new key signs at once, skipping pre-publication"
        ),
        (EventKind::Generated, _) => {
            tracing::info!(%kid, %set, %alg, "successor generated and published")
        }
        // A generated key that signs at once was announced just above.
        (EventKind::Activated, Cause::Generated(_)) => {}
        (EventKind::Activated, Cause::RotateNow) => tracing::warn!(
            %kid, %set, %alg,
            "rotate --now: activated at once, skipping pre-publication"
        ),
        (EventKind::Activated, Cause::Revoke) => tracing::warn!(
            %kid, %set, %alg,
            "activated at once after revocation, skipping pre-publication"
        ),
        (EventKind::Activated, _) if emergency => {
            tracing::warn!(%kid, %set, %alg, "activated at once, skipping pre-publication")
        }
        (EventKind::Activated, _) => tracing::info!(%kid, %set, %alg, "activated"),
        (EventKind::Deactivated, _) => {
            tracing::info!(%kid, %set, %alg, "deactivated; private half destroyed")
        }
        (EventKind::Retired, _) => {
            tracing::info!(%kid, %set, %alg, "retired: no longer published")
        }
        (EventKind::Revoked, _) => tracing::warn!(
            %kid, %set, %alg,
            "revoked: removed from the JWKS, private half destroyed"
        ),
        (EventKind::Rescheduled, _) => {
            if let Change::Reschedule { activate_at, .. } = change {
                tracing::info!(%kid, %set, %alg, %activate_at, ?cause, "pending activation moved");
            }
        }
    }
}
