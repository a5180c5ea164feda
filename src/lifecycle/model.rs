//! The lifecycle's model: a key as stored ([`StoredKey`]), one atomic
//! change to the keys ([`Change`]) and what applying it did ([`Applied`]),
//! and the events a change emits ([`Event`]). Plain data: the planner
//! decides on it, the store persists it, the executor turns applied changes
//! into events.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::types::{Alg, KeyState, Kid, SetName};

/// A key as stored. The private half, while the key may sign, is either
/// sealed here (`software`, see `seal`) or held in a token (`backend_ref`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub set: SetName,
    pub alg: Alg,
    pub kid: Kid,
    pub version: u32,
    pub state: KeyState,
    /// The public JWK as published (JSON text).
    pub public_jwk: String,
    /// AES-256-GCM sealed PKCS#8, only while pending or active, and only
    /// for a key of the `software` backend.
    pub sealed_private: Option<Vec<u8>>,
    /// The backend that made and holds the private half: `software` (sealed
    /// above) or the name of a `[backends.NAME]` table. Kept for good, so
    /// `keys list` still says where a retired key lived.
    pub backend: String,
    /// For a key held in a token: the object's CKA_ID, only while pending or
    /// active (the store forgets it when the private half is destroyed).
    pub backend_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the key entered the JWKS (= generation time).
    pub publish_at: DateTime<Utc>,
    /// Planned (pending) or actual activation.
    pub activate_at: Option<DateTime<Utc>>,
    /// When it left `active`; `None` while it has not.
    pub deactivate_at: Option<DateTime<Utc>>,
    /// When it leaves (or left) the JWKS.
    pub retire_at: Option<DateTime<Utc>>,
    /// Whether it was activated by `rotate --now` or a revocation,
    /// skipping pre-publication (DESIGN rule 8).
    pub emergency: bool,
}

impl std::fmt::Debug for StoredKey {
    // The sealed blob is ciphertext, but it has no business in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("state", &self.state)
            .field("publish_at", &self.publish_at)
            .field("activate_at", &self.activate_at)
            .field("deactivate_at", &self.deactivate_at)
            .field("retire_at", &self.retire_at)
            .field(
                "sealed_private",
                &self.sealed_private.as_ref().map(|_| "<sealed>"),
            )
            .field("backend", &self.backend)
            .field("backend_ref", &self.backend_ref)
            .finish()
    }
}

/// One change to the keys, applied atomically with its precondition re-checked.
#[derive(Clone, PartialEq, Eq)]
pub enum Change {
    /// Add a freshly generated key. As `Pending` it must be the only pending
    /// key of its (set, alg); as `Active` (bootstrap, or no signer left) there
    /// must be no active key. `version` must be one above the highest.
    Insert(StoredKey),
    /// Make the pending key `kid` the signer. The current active key (if any)
    /// becomes retiring with `retire_at`, its private half erased. Unless
    /// `emergency`, the pending key's `activate_at` must be `<= at`.
    Activate {
        set: SetName,
        alg: Alg,
        kid: Kid,
        at: DateTime<Utc>,
        retire_at: DateTime<Utc>,
        emergency: bool,
    },
    /// A retiring key whose `retire_at` has passed leaves the JWKS.
    Retire { kid: Kid, at: DateTime<Utc> },
    /// Remove a key from the JWKS at once and erase its private half. If it
    /// was the active key, the pending successor activates in the same
    /// transaction (DESIGN rule 8).
    Revoke { kid: Kid, at: DateTime<Utc> },
    /// Move a pending key's planned activation.
    Reschedule {
        kid: Kid,
        activate_at: DateTime<Utc>,
    },
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Insert(k) => write!(f, "Insert({} as {})", k.kid, k.state),
            Change::Activate {
                kid, at, emergency, ..
            } => {
                write!(f, "Activate({kid} at {at}, emergency={emergency})")
            }
            Change::Retire { kid, at } => write!(f, "Retire({kid} at {at})"),
            Change::Revoke { kid, at } => write!(f, "Revoke({kid} at {at})"),
            Change::Reschedule { kid, activate_at } => {
                write!(f, "Reschedule({kid} to {activate_at})")
            }
        }
    }
}

/// What applying a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Committed. For `Activate` and `Revoke`, `deactivated` is the key that
    /// stopped signing and `activated` the one that started.
    Done {
        activated: Option<Kid>,
        deactivated: Option<Kid>,
    },
    /// The precondition no longer held (another replica or an earlier tick
    /// got there first); nothing changed.
    Stale(String),
}

impl Change {
    /// The key this change is about (for `Activate`, the one that starts
    /// signing).
    pub fn kid(&self) -> &Kid {
        match self {
            Change::Insert(k) => &k.kid,
            Change::Activate { kid, .. }
            | Change::Retire { kid, .. }
            | Change::Revoke { kid, .. }
            | Change::Reschedule { kid, .. } => kid,
        }
    }

    /// The (set, alg) the change is about; for a change that names only a
    /// kid, looked up in `keys` (the keys it was planned from).
    pub fn target(&self, keys: &[StoredKey]) -> Option<(SetName, Alg)> {
        match self {
            Change::Insert(k) => Some((k.set.clone(), k.alg)),
            Change::Activate { set, alg, .. } => Some((set.clone(), *alg)),
            Change::Retire { kid, .. }
            | Change::Revoke { kid, .. }
            | Change::Reschedule { kid, .. } => keys
                .iter()
                .find(|k| &k.kid == kid)
                .map(|k| (k.set.clone(), k.alg)),
        }
    }

    /// What happened to which key once this change was `applied`, in
    /// causal order: a key is generated before it activates, a signer
    /// activates before its predecessor is deactivated, and a revocation
    /// comes before the activation it causes. Nothing for a stale change.
    pub fn events(&self, applied: &Applied) -> Vec<(EventKind, Kid)> {
        let Applied::Done {
            activated,
            deactivated,
        } = applied
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match self {
            Change::Insert(k) => {
                out.push((EventKind::Generated, k.kid.clone()));
                if k.state == KeyState::Active {
                    out.push((EventKind::Activated, k.kid.clone()));
                }
            }
            Change::Activate { kid, .. } => {
                out.push((
                    EventKind::Activated,
                    activated.clone().unwrap_or_else(|| kid.clone()),
                ));
                if let Some(old) = deactivated {
                    out.push((EventKind::Deactivated, old.clone()));
                }
            }
            Change::Retire { kid, .. } => out.push((EventKind::Retired, kid.clone())),
            Change::Revoke { kid, .. } => {
                out.push((EventKind::Revoked, kid.clone()));
                if let Some(next) = activated {
                    out.push((EventKind::Activated, next.clone()));
                }
            }
            Change::Reschedule { kid, .. } => out.push((EventKind::Rescheduled, kid.clone())),
        }
        out
    }
}

impl Applied {
    /// Whether the change was committed.
    pub fn is_done(&self) -> bool {
        matches!(self, Applied::Done { .. })
    }
}

/// A lifecycle event, in causal order, with the set's keys right after it.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub set: SetName,
    pub alg: Alg,
    pub kid: Kid,
    /// The set's keys just after this event's transaction.
    pub after: Vec<StoredKey>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Generated,
    Activated,
    Deactivated,
    Retired,
    Revoked,
    Rescheduled,
}

impl EventKind {
    /// Lowercase name, as in `simulate --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Generated => "generated",
            EventKind::Activated => "activated",
            EventKind::Deactivated => "deactivated",
            EventKind::Retired => "retired",
            EventKind::Revoked => "revoked",
            EventKind::Rescheduled => "rescheduled",
        }
    }
}
