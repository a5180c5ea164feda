//! The key lifecycle as a pure function: given a policy, the stored keys of
//! its set and `now`, [`plan`] says what must happen; [`next_due`] says when
//! the next thing will. Nothing here reads the clock, the RNG or the store
//! (STYLE: decisions never read the world); the executor carries plans out.

use chrono::{DateTime, Utc};

use super::model::{Change, StoredKey};
use crate::config::policy::Policy;
use crate::types::{Alg, KeyState, SetName};

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

/// One thing the lifecycle wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Generate a key (slow, outside any transaction), then insert it.
    Generate {
        set: SetName,
        alg: Alg,
        version: u32,
        /// `Active` for bootstrap / no signer, else `Pending`.
        state: KeyState,
        activate_at: DateTime<Utc>,
        reason: GenerateReason,
    },
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
    let published_enough = pending.publish_at + policy.publish_ahead.to_chrono();
    pending
        .activate_at
        .map_or(published_enough, |t| t.max(published_enough))
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
            (None, None) => steps.push(Step::Generate {
                set: policy.name.clone(),
                alg,
                version: next_version,
                state: KeyState::Active,
                activate_at: now,
                reason: if own.is_empty() {
                    GenerateReason::Bootstrap
                } else {
                    GenerateReason::NoSigner
                },
            }),
            (None, Some(p)) => steps.push(Step::Apply(Change::Activate {
                set: policy.name.clone(),
                alg,
                kid: p.kid.clone(),
                at: now,
                retire_at: now + policy.grace.to_chrono(),
                emergency: true,
            })),
            (Some(a), None) => steps.push(Step::Generate {
                set: policy.name.clone(),
                alg,
                version: next_version,
                state: KeyState::Pending,
                activate_at: successor_activation(policy, a.activate_at.unwrap_or(now), now),
                reason: GenerateReason::Successor,
            }),
            (Some(_), Some(p)) => {
                if earliest_activation(policy, p) <= now {
                    steps.push(Step::Apply(Change::Activate {
                        set: policy.name.clone(),
                        alg,
                        kid: p.kid.clone(),
                        at: now,
                        retire_at: now + policy.grace.to_chrono(),
                        emergency: false,
                    }));
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
            let wanted = successor_activation(policy, since, p.publish_at);
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
