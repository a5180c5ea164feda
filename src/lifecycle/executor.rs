//! Carries out lifecycle plans: generates keys off the async runtime, seals
//! them, and applies each transition as one store transaction that re-checks
//! its precondition. Also the admin operations (rotate, revoke) and the
//! reschedule after a policy reload. The decisions themselves live in
//! `plan`; the tick loop lives in `daemon`.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::{Applied, Change, Event, EventKind, StoredKey};
use super::plan::{self as lifecycle, GenerateReason, Step};
use crate::clock::Clock;
use crate::config::policy::{Policies, Policy};
use crate::jose::{Jwk, thumbprint};
use crate::keys::KeyError;
use crate::keys::seal::MasterKey;
use crate::keys::source::KeySource;
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

/// What `rotate` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotateOutcome {
    pub set: SetName,
    pub alg: Alg,
    pub activated: Option<Kid>,
    pub deactivated: Option<Kid>,
    pub pending: Option<Kid>,
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevokeOutcome {
    pub kid: Kid,
    pub set: SetName,
    pub alg: Alg,
    pub activated: Option<Kid>,
}

/// Shared, swappable policies (replaced whole on reload).
pub type PolicyHandle = Arc<RwLock<Arc<Policies>>>;

/// Executes lifecycle steps against the store.
pub struct Executor {
    store: Arc<dyn Store>,
    master: Arc<MasterKey>,
    keygen: Arc<dyn KeySource>,
    clock: Arc<dyn Clock>,
    policies: PolicyHandle,
    /// One lifecycle operation at a time in this process; across replicas
    /// the store's re-checks keep transitions correct.
    lock: tokio::sync::Mutex<()>,
}

/// Upper bound of plan/apply rounds per tick: a tick converges in a few
/// rounds (retire, activate, generate successor); more means a bug, and the
/// next tick goes on anyway.
const MAX_ROUNDS: usize = 16;

impl Executor {
    pub fn new(
        store: Arc<dyn Store>,
        master: Arc<MasterKey>,
        keygen: Arc<dyn KeySource>,
        clock: Arc<dyn Clock>,
        policies: PolicyHandle,
    ) -> Self {
        Executor {
            store,
            master,
            keygen,
            clock,
            policies,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Runs every due transition of every set, re-planning after each round
    /// until nothing is due. Returns the events in the order they happened.
    pub async fn tick(&self) -> Result<Vec<Event>, LifecycleError> {
        let _guard = self.lock.lock().await;
        let mut events = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let policies = self.policies();
            // Live keys only: retired and revoked keys (one per rotation,
            // forever) never need a step, so a tick every few seconds reads
            // and plans over what can still change, not the whole history.
            let keys = self.store.live_keys().await?;
            let now = self.clock.now();
            let mut did_something = false;
            for policy in policies.iter() {
                for step in lifecycle::plan(policy, &keys, now) {
                    did_something |= self.run_step(policy, &keys, step, &mut events).await?;
                }
            }
            if !did_something {
                break;
            }
        }
        Ok(events)
    }

    /// The earliest instant at which a tick will have work, over all sets.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, LifecycleError> {
        let keys = self.store.live_keys().await?;
        Ok(self
            .policies()
            .iter()
            .filter_map(|p| lifecycle::next_due(p, &keys))
            .min())
    }

    async fn run_step(
        &self,
        policy: &Policy,
        keys: &[StoredKey],
        step: Step,
        events: &mut Vec<Event>,
    ) -> Result<bool, LifecycleError> {
        match step {
            Step::Generate {
                set,
                alg,
                version,
                state,
                reason,
                ..
            } => {
                let active_since = keys
                    .iter()
                    .find(|k| k.set == set && k.alg == alg && k.state == KeyState::Active)
                    .and_then(|k| k.activate_at);
                let kid = self
                    .generate_and_insert(policy, alg, version, state, active_since)
                    .await?;
                match (&kid, reason) {
                    (Some(kid), GenerateReason::Bootstrap) => tracing::warn!(
                        %kid, %set, %alg,
                        "first key of this set signs at once: nothing to overlap, so pre-publication (rule 1) does not apply"
                    ),
                    (Some(kid), GenerateReason::NoSigner) => tracing::warn!(
                        %kid, %set, %alg,
                        "no signing key left (all revoked): new key signs at once, skipping pre-publication"
                    ),
                    (Some(kid), GenerateReason::Successor) => {
                        tracing::info!(%kid, %set, %alg, "successor generated and published")
                    }
                    (None, _) => {}
                }
                if let Some(kid) = kid {
                    let kind = if state == KeyState::Active {
                        vec![EventKind::Generated, EventKind::Activated]
                    } else {
                        vec![EventKind::Generated]
                    };
                    let after = self.set_keys(&set).await?;
                    let at = self.clock.now();
                    for kind in kind {
                        events.push(Event {
                            at,
                            kind,
                            set: set.clone(),
                            alg,
                            kid: kid.clone(),
                            after: after.clone(),
                        });
                    }
                    return Ok(true);
                }
                Ok(false)
            }
            Step::Apply(change) => {
                let (set, alg) = change_target(keys, &change);
                let applied = self.store.apply(&change).await?;
                let Applied::Done {
                    activated,
                    deactivated,
                } = applied
                else {
                    if let Applied::Stale(why) = applied {
                        tracing::debug!(?change, %why, "transition already done elsewhere");
                    }
                    return Ok(false);
                };
                let (Some(set), Some(alg)) = (set, alg) else {
                    return Ok(true);
                };
                let at = self.clock.now();
                let after = self.set_keys(&set).await?;
                let mut push = |kind, kid: Kid| {
                    events.push(Event {
                        at,
                        kind,
                        set: set.clone(),
                        alg,
                        kid,
                        after: after.clone(),
                    })
                };
                match &change {
                    Change::Activate { kid, emergency, .. } => {
                        if *emergency {
                            tracing::warn!(%kid, "activated at once, skipping pre-publication");
                        } else {
                            tracing::info!(%kid, "activated");
                        }
                        push(
                            EventKind::Activated,
                            activated.unwrap_or_else(|| kid.clone()),
                        );
                        if let Some(old) = deactivated {
                            tracing::info!(kid = %old, "deactivated; private half destroyed");
                            push(EventKind::Deactivated, old);
                        }
                    }
                    Change::Retire { kid, .. } => {
                        tracing::info!(%kid, "retired: no longer published");
                        push(EventKind::Retired, kid.clone());
                    }
                    Change::Revoke { kid, .. } => {
                        push(EventKind::Revoked, kid.clone());
                        if let Some(next) = activated {
                            push(EventKind::Activated, next);
                        }
                    }
                    Change::Reschedule { kid, .. } => push(EventKind::Rescheduled, kid.clone()),
                    Change::Insert(k) => push(EventKind::Generated, k.kid.clone()),
                }
                Ok(true)
            }
        }
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

    /// Generates a key (on a blocking thread), seals it and inserts it.
    /// `None` when another replica inserted first (the store said stale).
    async fn generate_and_insert(
        &self,
        policy: &Policy,
        alg: Alg,
        version: u32,
        state: KeyState,
        active_since: Option<DateTime<Utc>>,
    ) -> Result<Option<Kid>, LifecycleError> {
        let keygen = self.keygen.clone();
        let bits = policy.rsa_bits;
        // Off the runtime and below the signing threads' priority: see
        // `background` for why and what it measured.
        let generated =
            background::run_low_priority("jwksd-keygen", move || keygen.generate(alg, bits))
                .await
                .map_err(|e| LifecycleError::Join(e.to_string()))??;
        let kid = Kid::build(&policy.name, alg, version, &thumbprint(&generated.public));
        let jwk = Jwk::from_public(&kid, alg, &generated.public);
        let public_jwk =
            serde_json::to_string(&jwk).map_err(|e| LifecycleError::Seal(e.to_string()))?;
        let sealed = self
            .master
            .seal(&kid, &generated.pkcs8)
            .map_err(|e| LifecycleError::Seal(e.to_string()))?;
        // Time is read after generation: the key is published from the
        // moment it is committed, and rule 1 counts from then.
        let now = self.clock.now();
        let activate_at = match state {
            KeyState::Active => now,
            _ => lifecycle::successor_activation(policy, active_since.unwrap_or(now), now),
        };
        let key = StoredKey {
            set: policy.name.clone(),
            alg,
            kid: kid.clone(),
            version,
            state,
            public_jwk,
            sealed_private: Some(sealed),
            created_at: now,
            publish_at: now,
            activate_at: Some(activate_at),
            deactivate_at: None,
            retire_at: None,
            emergency: false,
        };
        match self.store.apply(&Change::Insert(key)).await? {
            Applied::Done { .. } => Ok(Some(kid)),
            Applied::Stale(why) => {
                tracing::debug!(%kid, %why, "generated key not needed any more; discarded");
                Ok(None)
            }
        }
    }

    /// `keys rotate`: with `now`, the pending key signs at once (skipping
    /// rule 1, logged) and a new successor is generated before this returns;
    /// without, the pending key is rescheduled to the earliest time rule 1
    /// allows.
    pub async fn rotate(
        &self,
        set: &SetName,
        alg: Option<Alg>,
        now_flag: bool,
    ) -> Result<(RotateOutcome, Vec<Event>), LifecycleError> {
        let policies = self.policies();
        let policy = policies
            .get(set)
            .ok_or_else(|| LifecycleError::UnknownSet(set.to_string()))?
            .clone();
        let alg = alg.unwrap_or(policy.algorithms[0]);
        if !policy.algorithms.contains(&alg) {
            return Err(LifecycleError::AlgNotInSet {
                set: set.to_string(),
                alg,
            });
        }
        // Bring the set up to date first: there must be an active key and a
        // pending successor to rotate to.
        let mut events = self.tick().await?;
        let _guard = self.lock.lock().await;
        let keys = self.set_keys(set).await?;
        let pending = keys
            .iter()
            .find(|k| k.alg == alg && k.state == KeyState::Pending)
            .ok_or_else(|| {
                LifecycleError::Conflict(format!("{set}/{alg} has no pending key to rotate to"))
            })?
            .clone();
        let now = self.clock.now();
        if !now_flag {
            let at = lifecycle::earliest_activation(
                &policy,
                &StoredKey {
                    activate_at: Some(now),
                    ..pending.clone()
                },
            );
            let change = Change::Reschedule {
                kid: pending.kid.clone(),
                activate_at: at,
            };
            self.run_step(&policy, &keys, Step::Apply(change), &mut events)
                .await?;
            let outcome = RotateOutcome {
                set: set.clone(),
                alg,
                activated: None,
                deactivated: None,
                pending: Some(pending.kid),
            };
            return Ok((outcome, events));
        }
        let change = Change::Activate {
            set: set.clone(),
            alg,
            kid: pending.kid.clone(),
            at: now,
            retire_at: now + policy.grace.to_chrono(),
            emergency: true,
        };
        let applied = self.store.apply(&change).await?;
        let Applied::Done {
            activated,
            deactivated,
        } = applied
        else {
            return Err(LifecycleError::Conflict(format!(
                "rotation of {set}/{alg} raced with another change; try again"
            )));
        };
        tracing::warn!(kid = %pending.kid, %set, %alg, "rotate --now: activated at once, skipping pre-publication");
        let after = self.set_keys(set).await?;
        events.push(Event {
            at: now,
            kind: EventKind::Activated,
            set: set.clone(),
            alg,
            kid: pending.kid.clone(),
            after: after.clone(),
        });
        if let Some(old) = &deactivated {
            events.push(Event {
                at: now,
                kind: EventKind::Deactivated,
                set: set.clone(),
                alg,
                kid: old.clone(),
                after,
            });
        }
        drop(_guard);
        // Rule 4: the successor is generated at once.
        events.extend(self.tick().await?);
        let pending = self
            .set_keys(set)
            .await?
            .into_iter()
            .find(|k| k.alg == alg && k.state == KeyState::Pending)
            .map(|k| k.kid);
        Ok((
            RotateOutcome {
                set: set.clone(),
                alg,
                activated,
                deactivated,
                pending,
            },
            events,
        ))
    }

    /// `keys revoke`: out of the JWKS at once, private half destroyed; a
    /// revoked active key hands over to its successor, and a new successor
    /// is generated before this returns.
    pub async fn revoke(&self, kid: &Kid) -> Result<(RevokeOutcome, Vec<Event>), LifecycleError> {
        let mut events = Vec::new();
        let keys = self.store.keys().await?;
        let key = keys
            .iter()
            .find(|k| &k.kid == kid)
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_string()))?
            .clone();
        if !key.state.is_published() {
            return Err(LifecycleError::Conflict(format!(
                "{kid} is already {}",
                key.state
            )));
        }
        let guard = self.lock.lock().await;
        let now = self.clock.now();
        let applied = self
            .store
            .apply(&Change::Revoke {
                kid: kid.clone(),
                at: now,
            })
            .await?;
        let Applied::Done { activated, .. } = applied else {
            return Err(LifecycleError::Conflict(format!(
                "{kid} changed state meanwhile; look again"
            )));
        };
        tracing::warn!(%kid, "revoked: removed from the JWKS, private half destroyed");
        let after = self.set_keys(&key.set).await?;
        events.push(Event {
            at: now,
            kind: EventKind::Revoked,
            set: key.set.clone(),
            alg: key.alg,
            kid: kid.clone(),
            after: after.clone(),
        });
        if let Some(next) = &activated {
            tracing::warn!(kid = %next, "activated at once after revocation, skipping pre-publication");
            events.push(Event {
                at: now,
                kind: EventKind::Activated,
                set: key.set.clone(),
                alg: key.alg,
                kid: next.clone(),
                after,
            });
        }
        drop(guard);
        events.extend(self.tick().await?);
        Ok((
            RevokeOutcome {
                kid: kid.clone(),
                set: key.set,
                alg: key.alg,
                activated,
            },
            events,
        ))
    }

    /// After a policy reload: moves pending activations to the new schedule.
    pub async fn reschedule(&self) -> Result<Vec<Event>, LifecycleError> {
        let _guard = self.lock.lock().await;
        let keys = self.store.live_keys().await?;
        let mut events = Vec::new();
        for policy in self.policies().iter() {
            for change in lifecycle::reschedule(policy, &keys) {
                self.run_step(policy, &keys, Step::Apply(change), &mut events)
                    .await?;
            }
        }
        Ok(events)
    }
}

/// The (set, alg) a change is about, looked up in the keys it was planned from.
fn change_target(keys: &[StoredKey], change: &Change) -> (Option<SetName>, Option<Alg>) {
    match change {
        Change::Activate { set, alg, .. } => (Some(set.clone()), Some(*alg)),
        Change::Insert(k) => (Some(k.set.clone()), Some(k.alg)),
        Change::Retire { kid, .. }
        | Change::Revoke { kid, .. }
        | Change::Reschedule { kid, .. } => keys
            .iter()
            .find(|k| &k.kid == kid)
            .map_or((None, None), |k| (Some(k.set.clone()), Some(k.alg))),
    }
}
