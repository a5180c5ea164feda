//! The key lifecycle as a pure function: given a policy, the stored keys of
//! its set and `now`, [`plan`] says what must happen; [`next_due`] says when
//! the next thing will. Nothing here reads the clock, the RNG or the store
//! (STYLE: decisions never read the world); the executor carries plans out.

use chrono::{DateTime, Utc};

use super::model::{Change, StoredKey};
use crate::config::policy::Policy;
use crate::types::{Alg, KeyState, Kid, SetName};

/// Why a key is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateReason {
    /// The set has no key at all for this alg: the first key signs at once,
    /// with nothing to overlap (the one exception to rule 1).
    Bootstrap,
    /// Every key was revoked or retired and no pending key exists: a signer
    /// must exist again, so it signs at once (logged as skipping rule 1).
    NoSigner,
    /// The active key has no successor yet (rule 4).
    Successor,
}

/// A key the lifecycle wants generated: what its row will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub set: SetName,
    pub alg: Alg,
    pub version: u32,
    /// `Active` for bootstrap / no signer, else `Pending`.
    pub state: KeyState,
    /// When the key activates if it is published at plan time; the
    /// executor publishes it after generating it, so the row gets
    /// [`activation`] for the actual publication time ([`new_key`]).
    pub activate_at: DateTime<Utc>,
    /// The activation of the active key this one succeeds (`None` when
    /// the new key signs at once).
    pub active_since: Option<DateTime<Utc>>,
    pub reason: GenerateReason,
}

/// One thing the lifecycle wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Generate a key (slow, outside any transaction), then insert it.
    Generate(NewKey),
    /// A store change whose precondition the store re-checks.
    Apply(Change),
}

/// The keys of one (set, alg), in version order.
fn keys_of<'a>(keys: &'a [StoredKey], set: &SetName, alg: Alg) -> Vec<&'a StoredKey> {
    let mut v: Vec<&StoredKey> = keys
        .iter()
        .filter(|k| &k.set == set && k.alg == alg)
        .collect();
    v.sort_by_key(|k| k.version);
    v
}

/// When a pending key may activate: its planned time, but never before it has
/// been published for `publish_ahead` (rule 1).
pub fn earliest_activation(policy: &Policy, pending: &StoredKey) -> DateTime<Utc> {
    let published_enough = published_enough(policy, pending);
    pending
        .activate_at
        .map_or(published_enough, |t| t.max(published_enough))
}

/// The first instant at which `key` has been in the JWKS for `publish_ahead`.
fn published_enough(policy: &Policy, key: &StoredKey) -> DateTime<Utc> {
    key.publish_at + policy.publish_ahead.to_chrono()
}

/// The planned activation of a successor generated at `now` for an active key
/// that activated at `active_since` (rule 7: first schedule point that also
/// satisfies rule 1).
pub fn successor_activation(
    policy: &Policy,
    active_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    policy
        .schedule
        .next_activation(active_since, now + policy.publish_ahead.to_chrono())
}

/// When a new key in `state`, published at `published_at`, activates: at
/// once if it signs at once (bootstrap, no signer left); as the successor of
/// a key active since `active_since`, at the first schedule point that also
/// satisfies rule 1 counted from its publication (rule 7).
pub fn activation(
    policy: &Policy,
    state: KeyState,
    active_since: Option<DateTime<Utc>>,
    published_at: DateTime<Utc>,
) -> DateTime<Utc> {
    match state {
        KeyState::Active => published_at,
        _ => successor_activation(policy, active_since.unwrap_or(published_at), published_at),
    }
}

/// The public half of a freshly generated key, and where its private half
/// is: sealed here, or held in a backend under a reference.
pub struct GeneratedRow {
    pub kid: Kid,
    /// The public JWK as published (JSON text).
    pub public_jwk: String,
    /// The sealed private half (the `software` backend).
    pub sealed_private: Option<Vec<u8>>,
    /// The backend that made the key (`software` or a `[backends.NAME]`).
    pub backend: String,
    /// The token object's reference (CKA_ID), for a key held in a token.
    pub backend_ref: Option<String>,
}

/// The stored row of the key planned as `new`, generated and committed
/// (so published) at `published_at`. Generation takes time (RSA-4096:
/// seconds) and rule 1 counts from publication, so its activation is
/// [`activation`] at the time of publication, not at the time of the plan.
pub fn new_key(
    policy: &Policy,
    new: &NewKey,
    generated: GeneratedRow,
    published_at: DateTime<Utc>,
) -> StoredKey {
    StoredKey {
        set: new.set.clone(),
        alg: new.alg,
        kid: generated.kid,
        version: new.version,
        state: new.state,
        public_jwk: generated.public_jwk,
        sealed_private: generated.sealed_private,
        backend: generated.backend,
        backend_ref: generated.backend_ref,
        created_at: published_at,
        publish_at: published_at,
        activate_at: Some(activation(
            policy,
            new.state,
            new.active_since,
            published_at,
        )),
        deactivate_at: None,
        retire_at: None,
        emergency: false,
    }
}

/// Why an operator's rotation or revocation has nothing to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `rotate`: the (set, alg) has no pending key to rotate to.
    #[error("{set}/{alg} has no pending key to rotate to")]
    NoPending { set: SetName, alg: Alg },
    /// `revoke`: no key has this kid.
    #[error("no key with kid {0:?}")]
    UnknownKid(String),
    /// `revoke`: the key is already out of the JWKS.
    #[error("{kid} is already {state}")]
    NotPublished { kid: Kid, state: KeyState },
}

/// `keys rotate` for `alg` of `policy`'s set (DESIGN rule 8): with
/// `at_once`, the pending key signs from `now` on, skipping rule 1, and the
/// active key starts its grace; without, the pending key moves to the
/// earliest time rule 1 allows (now, or when it has been published for
/// `publish_ahead`).
pub fn rotation(
    policy: &Policy,
    keys: &[StoredKey],
    alg: Alg,
    at_once: bool,
    now: DateTime<Utc>,
) -> Result<Change, Refusal> {
    let pending = keys_of(keys, &policy.name, alg)
        .into_iter()
        .find(|k| k.state == KeyState::Pending)
        .ok_or_else(|| Refusal::NoPending {
            set: policy.name.clone(),
            alg,
        })?;
    Ok(if at_once {
        activation_change(policy, alg, pending, now, true)
    } else {
        Change::Reschedule {
            kid: pending.kid.clone(),
            activate_at: now.max(published_enough(policy, pending)),
        }
    })
}

/// `keys revoke KID` (DESIGN rule 8): out of the JWKS at `now`, private
/// half destroyed; the store activates the successor of an active key in
/// the same transaction. `keys` must hold every key, so that a retired or
/// revoked kid is told apart from an unknown one.
pub fn revocation(keys: &[StoredKey], kid: &str, now: DateTime<Utc>) -> Result<Change, Refusal> {
    let key = keys
        .iter()
        .find(|k| k.kid.as_str() == kid)
        .ok_or_else(|| Refusal::UnknownKid(kid.to_owned()))?;
    if !key.state.is_published() {
        return Err(Refusal::NotPublished {
            kid: key.kid.clone(),
            state: key.state,
        });
    }
    Ok(Change::Revoke {
        kid: key.kid.clone(),
        at: now,
    })
}

/// Make `pending` the signer of `alg` at `now`; the active key, if any,
/// starts its grace (rule 3).
fn activation_change(
    policy: &Policy,
    alg: Alg,
    pending: &StoredKey,
    now: DateTime<Utc>,
    emergency: bool,
) -> Change {
    Change::Activate {
        set: policy.name.clone(),
        alg,
        kid: pending.kid.clone(),
        at: now,
        retire_at: now + policy.grace.to_chrono(),
        emergency,
    }
}

/// What must happen now for `policy`'s set. `keys` may hold other sets'
/// keys too; they are ignored.
pub fn plan(policy: &Policy, keys: &[StoredKey], now: DateTime<Utc>) -> Vec<Step> {
    let mut steps = Vec::new();
    for &alg in &policy.algorithms {
        let own = keys_of(keys, &policy.name, alg);
        for k in &own {
            if k.state == KeyState::Retiring && k.retire_at.is_some_and(|t| t <= now) {
                steps.push(Step::Apply(Change::Retire {
                    kid: k.kid.clone(),
                    at: now,
                }));
            }
        }
        let active = own.iter().find(|k| k.state == KeyState::Active);
        let pending = own.iter().find(|k| k.state == KeyState::Pending);
        let next_version = own.last().map_or(1, |k| k.version + 1);
        match (active, pending) {
            (None, None) => steps.push(Step::Generate(NewKey {
                set: policy.name.clone(),
                alg,
                version: next_version,
                state: KeyState::Active,
                activate_at: activation(policy, KeyState::Active, None, now),
                active_since: None,
                reason: if own.is_empty() {
                    GenerateReason::Bootstrap
                } else {
                    GenerateReason::NoSigner
                },
            })),
            (None, Some(p)) => {
                steps.push(Step::Apply(activation_change(policy, alg, p, now, true)))
            }
            (Some(a), None) => {
                let active_since = Some(a.activate_at.unwrap_or(now));
                steps.push(Step::Generate(NewKey {
                    set: policy.name.clone(),
                    alg,
                    version: next_version,
                    state: KeyState::Pending,
                    activate_at: activation(policy, KeyState::Pending, active_since, now),
                    active_since,
                    reason: GenerateReason::Successor,
                }))
            }
            (Some(_), Some(p)) => {
                if earliest_activation(policy, p) <= now {
                    steps.push(Step::Apply(activation_change(policy, alg, p, now, false)));
                }
            }
        }
    }
    steps
}

/// The next instant at which [`plan`] will have something to do, if keys
/// stay as they are: the earliest pending activation or retirement.
pub fn next_due(policy: &Policy, keys: &[StoredKey]) -> Option<DateTime<Utc>> {
    keys.iter()
        .filter(|k| k.set == policy.name && policy.algorithms.contains(&k.alg))
        .filter_map(|k| match k.state {
            KeyState::Pending => Some(earliest_activation(policy, k)),
            KeyState::Retiring => k.retire_at,
            _ => None,
        })
        .min()
}

/// Pending keys whose planned activation no longer matches the policy's
/// schedule (after a policy reload), with their new times. Never earlier than
/// rule 1 allows.
pub fn reschedule(policy: &Policy, keys: &[StoredKey]) -> Vec<Change> {
    let mut changes = Vec::new();
    for &alg in &policy.algorithms {
        let own = keys_of(keys, &policy.name, alg);
        let active = own.iter().find(|k| k.state == KeyState::Active);
        let pending = own.iter().find(|k| k.state == KeyState::Pending);
        if let (Some(a), Some(p)) = (active, pending) {
            let since = a.activate_at.unwrap_or(p.publish_at);
            let wanted = activation(policy, KeyState::Pending, Some(since), p.publish_at);
            if p.activate_at != Some(wanted) {
                changes.push(Change::Reschedule {
                    kid: p.kid.clone(),
                    activate_at: wanted,
                });
            }
        }
    }
    changes
}
