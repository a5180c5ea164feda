//! Token objects no key should hold any more (DESIGN §5): the private
//! half of a key the store no longer lets sign (a crash between the commit
//! and `C_DestroyObject`, or a token that was down then), and objects the
//! store never knew (a crash between generating a key in the token and
//! recording it). The first are destroyed at once; the second only after
//! `orphan_grace`, since another replica may be about to record the key
//! it just generated. An orphan is never reused: its key was never
//! published.
//!
//! Owns: judging each object and the first-seen times of unknown ones.
//! Does not own: talking to the token (`keys::pkcs11`), or when to sweep
//! (the lease holder's loop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::model::StoredKey;
use crate::keys::backend::Backends;
use crate::keys::pkcs11::{Pkcs11Token, TokenObject};
use crate::store::Store;
use crate::types::{KeyState, Kid, SetName};

/// How long after a key leaves `active` (or is revoked) its token object
/// is destroyed: every replica follows a commit within 5 s (DESIGN §4) and
/// stops signing with the key, so none finds its signer gone from the
/// token. Software keys lose their sealed blob in the commit itself.
pub const DESTROY_AFTER: Duration = Duration::from_secs(10);

/// The label a token key gets while it is generated, before its kid is
/// known (see `keys::pkcs11`).
pub const TEMPORARY_LABEL_PREFIX: &str = "jwksd-new-";

/// What to do with one object of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The private half of a pending or active key of this backend.
    Keep,
    /// A key the store knows, which may no longer sign: destroy at once.
    Outlived(KeyState),
    /// jwksd's label, but no key of the store: destroy after the grace.
    Unknown,
    /// Not jwksd's (another application's object, or a set this daemon
    /// does not serve): left alone.
    NotOurs,
}

/// Judges the object labelled `label` in backend `backend` at `now`,
/// against every stored key and the sets this daemon serves. A key that
/// left `active` less than [`DESTROY_AFTER`] ago is kept: its destruction
/// is already planned, and replicas may still be following the change.
pub fn judge(
    label: &str,
    backend: &str,
    keys: &[StoredKey],
    sets: &[SetName],
    now: DateTime<Utc>,
) -> Verdict {
    if let Some(k) = keys.iter().find(|k| k.kid.as_str() == label) {
        if k.backend != backend {
            return Verdict::NotOurs;
        }
        let left = k.deactivate_at.or(k.retire_at);
        let recently =
            left.is_some_and(|at| (now - at).to_std().unwrap_or_default() < DESTROY_AFTER);
        return match k.state {
            KeyState::Pending | KeyState::Active => Verdict::Keep,
            _ if recently => Verdict::Keep,
            other => Verdict::Outlived(other),
        };
    }
    if label.starts_with(TEMPORARY_LABEL_PREFIX) {
        return Verdict::Unknown;
    }
    // A kid is `<set>-<alg>-v<N>-<t>`: an unknown kid of one of our sets is
    // one this daemon (or a replica) generated and never recorded.
    let ours = sets.iter().any(|set| {
        label
            .strip_prefix(set.as_str())
            .is_some_and(|rest| rest.starts_with("-rs384-v") || rest.starts_with("-es384-v"))
    });
    if ours {
        Verdict::Unknown
    } else {
        Verdict::NotOurs
    }
}

/// First-seen times of unknown objects, across sweeps of this process.
#[derive(Default)]
pub struct OrphanSweep {
    first_seen: Mutex<HashMap<(String, String), DateTime<Utc>>>,
}

/// What one sweep of one token did, for the log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Labels destroyed (outlived keys and orphans past their grace).
    pub destroyed: Vec<String>,
    /// Unknown labels still within their grace.
    pub waiting: Vec<String>,
}

impl OrphanSweep {
    /// Sweeps every token of `backends` at `now`, each with its own
    /// `orphan_grace`, judging its objects against the keys of `store` and
    /// the `sets` this daemon serves. A token that is down is skipped (the
    /// next sweep retries); so is everything while the store does not
    /// answer.
    pub async fn sweep(
        &self,
        backends: &Backends,
        store: &dyn Store,
        sets: &[SetName],
        now: DateTime<Utc>,
    ) -> Vec<(String, SweepReport)> {
        let mut listed = Vec::new();
        for (token, grace) in backends.tokens_with_grace() {
            let lister = token.clone();
            match tokio::task::spawn_blocking(move || lister.list_objects()).await {
                Ok(Ok(objects)) => listed.push((token.clone(), grace, objects)),
                Ok(Err(e)) => {
                    tracing::debug!(backend = token.name(), error = %e, "orphan sweep: cannot list the token now")
                }
                Err(e) => tracing::warn!(error = %e, "orphan sweep: listing task failed"),
            }
        }
        if listed.is_empty() {
            return Vec::new();
        }
        // The keys are read after the tokens were listed: a key generated
        // and recorded in between is then known, never taken for an orphan.
        let keys = match store.keys().await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::debug!(error = %e, "orphan sweep: store does not answer; next sweep retries");
                return Vec::new();
            }
        };
        let mut reports = Vec::new();
        for (token, grace, objects) in listed {
            let report = self
                .sweep_token(&token, grace, objects, &keys, sets, now)
                .await;
            reports.push((token.name().to_owned(), report));
        }
        reports
    }

    async fn sweep_token(
        &self,
        token: &Arc<Pkcs11Token>,
        grace: Duration,
        objects: Vec<TokenObject>,
        keys: &[StoredKey],
        sets: &[SetName],
        now: DateTime<Utc>,
    ) -> SweepReport {
        let backend = token.name().to_owned();
        // Judged by label (the kid), destroyed by CKA_ID: the driver finds
        // objects by id, which jwksd sets to the label, but an object made
        // elsewhere may differ.
        // An object without a CKA_ID is not one jwksd made (it sets the id
        // to the label), and destroying by an empty id would hit every
        // object that has none: left alone.
        let ids: std::collections::BTreeMap<String, Kid> = objects
            .into_iter()
            .filter(|o| !o.id.is_empty())
            .map(|o| {
                let id = Kid::from_stored(String::from_utf8_lossy(&o.id).into_owned());
                (o.label, id)
            })
            .collect();
        let labels: Vec<String> = ids.keys().cloned().collect();
        let mut report = SweepReport::default();
        let mut doomed = Vec::new();
        {
            let mut seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
            // Forget labels that are gone (destroyed, or recorded by now).
            seen.retain(|(b, l), _| b != &backend || labels.contains(l));
            for label in labels {
                match judge(&label, &backend, keys, sets, now) {
                    Verdict::Keep | Verdict::NotOurs => {
                        seen.remove(&(backend.clone(), label));
                    }
                    Verdict::Outlived(state) => {
                        tracing::warn!(
                            %backend, kid = %label, %state,
                            "private half outlived its key (a crash or a token outage when it was destroyed): destroying it now"
                        );
                        doomed.push(label);
                    }
                    Verdict::Unknown => {
                        let first = *seen.entry((backend.clone(), label.clone())).or_insert(now);
                        let age = (now - first).to_std().unwrap_or_default();
                        if age >= grace {
                            tracing::warn!(
                                %backend, label = %label, grace_s = grace.as_secs(),
                                "orphan key object (generated, never recorded in the store): destroying it, never reused"
                            );
                            seen.remove(&(backend.clone(), label.clone()));
                            doomed.push(label);
                        } else {
                            if first == now {
                                tracing::warn!(
                                    %backend, label = %label, grace_s = grace.as_secs(),
                                    "key object unknown to the store: destroyed after orphan_grace unless it is recorded by then"
                                );
                            }
                            report.waiting.push(label);
                        }
                    }
                }
            }
        }
        for label in doomed {
            let destroyer = token.clone();
            let Some(id) = ids.get(&label).cloned() else {
                continue;
            };
            match tokio::task::spawn_blocking(move || destroyer.destroy(&id)).await {
                Ok(Ok(_)) => report.destroyed.push(label),
                Ok(Err(e)) => {
                    tracing::warn!(%backend, label = %label, error = %e, "could not destroy the object; the next sweep retries")
                }
                Err(e) => tracing::warn!(error = %e, "orphan sweep: destroy task failed"),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Alg;

    fn key(kid: &str, state: KeyState) -> StoredKey {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        StoredKey {
            set: SetName::new("default").unwrap(),
            alg: Alg::Rs384,
            kid: Kid::from_stored(kid),
            version: 1,
            state,
            public_jwk: "{}".into(),
            sealed_private: None,
            backend: "hsm".into(),
            backend_ref: state.holds_private().then(|| kid.to_owned()),
            created_at: at,
            publish_at: at,
            activate_at: None,
            deactivate_at: None,
            retire_at: None,
            emergency: false,
        }
    }

    /// Long after every key of `key()` was made.
    fn later() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + 3600, 0).unwrap()
    }

    fn sets() -> Vec<SetName> {
        vec![SetName::new("default").unwrap()]
    }

    #[test]
    fn keys_that_may_sign_are_kept_and_those_that_may_not_are_destroyed() {
        let keys = vec![
            key("default-rs384-v1-aaaaaaaa", KeyState::Active),
            key("default-rs384-v2-bbbbbbbb", KeyState::Pending),
            key("default-es384-v1-cccccccc", KeyState::Retiring),
            key("default-es384-v2-dddddddd", KeyState::Revoked),
        ];
        let verdict = |label: &str| judge(label, "hsm", &keys, &sets(), later());
        assert_eq!(verdict("default-rs384-v1-aaaaaaaa"), Verdict::Keep);
        assert_eq!(verdict("default-rs384-v2-bbbbbbbb"), Verdict::Keep);
        assert_eq!(
            verdict("default-es384-v1-cccccccc"),
            Verdict::Outlived(KeyState::Retiring)
        );
        assert_eq!(
            verdict("default-es384-v2-dddddddd"),
            Verdict::Outlived(KeyState::Revoked)
        );
        // A key that left a moment ago keeps its object until DESTROY_AFTER.
        let mut just_left = key("default-es384-v3-eeeeeeee", KeyState::Retiring);
        just_left.deactivate_at = Some(later() - chrono::Duration::seconds(3));
        let keys_now = [just_left];
        assert_eq!(
            judge(
                "default-es384-v3-eeeeeeee",
                "hsm",
                &keys_now,
                &sets(),
                later()
            ),
            Verdict::Keep
        );
        let after = later() + chrono::Duration::seconds(8);
        assert_eq!(
            judge(
                "default-es384-v3-eeeeeeee",
                "hsm",
                &keys_now,
                &sets(),
                after
            ),
            Verdict::Outlived(KeyState::Retiring)
        );
        // The same kid in another backend is not this token's key.
        assert_eq!(
            judge(
                "default-rs384-v1-aaaaaaaa",
                "other",
                &keys,
                &sets(),
                later()
            ),
            Verdict::NotOurs
        );
    }

    #[test]
    fn unknown_objects_are_ours_only_by_the_temporary_label_or_a_kid_of_our_sets() {
        let keys = Vec::new();
        let verdict = |label: &str| judge(label, "hsm", &keys, &sets(), later());
        assert_eq!(verdict("jwksd-new-0123456789abcdef"), Verdict::Unknown);
        assert_eq!(verdict("default-rs384-v7-zzzzzzzz"), Verdict::Unknown);
        assert_eq!(verdict("default-es384-v1-zzzzzzzz"), Verdict::Unknown);
        assert_eq!(verdict("billing-rs384-v1-zzzzzzzz"), Verdict::NotOurs);
        assert_eq!(verdict("other-app-key"), Verdict::NotOurs);
        assert_eq!(verdict("defaultx-rs384-v1-zzzzzzzz"), Verdict::NotOurs);
    }
}
