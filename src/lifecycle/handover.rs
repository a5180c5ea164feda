//! What an emergency hand-over (`rotate --now`, revoking the active key)
//! means for verifiers that cache the JWKS: how long ago the new signer was
//! published, and until when a verifier that fetched the JWKS just before
//! that may still refuse its assertions.
//!
//! Such a verifier keeps its copy for `jwks_max_age`, and some keep it
//! longer when that is short (oidc-provider holds a JWKS at least 60 s and
//! refetches only after a verification failed on the stale copy). A key
//! that was pre-published for its full `publish_ahead` is past that window
//! when it activates; an emergency skips pre-publication, so its window may
//! still be open, and the operator has to know.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::StoredKey;
use crate::types::{Kid, Span};

/// The shortest time verifiers are known to keep a JWKS whatever its
/// `max-age` says (oidc-provider: measured 61 s with `max-age=0`).
pub const VERIFIER_MIN_CACHE: Span = Span::from_secs(60);

/// The new signer of an emergency hand-over, as the answer and the log
/// report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handover {
    /// The key that signs from now on.
    pub kid: Kid,
    /// When it entered the JWKS (RFC 3339).
    pub published_at: DateTime<Utc>,
    /// Seconds between its publication and the hand-over.
    pub published_s_ago: i64,
    /// Until when a verifier whose JWKS copy predates the key may refuse
    /// assertions signed by it; `None` once every such copy has expired.
    pub caches_may_refuse_until: Option<DateTime<Utc>>,
}

impl Handover {
    /// The hand-over to `signer` at `now`, for a set whose JWKS is served
    /// with `jwks_max_age`.
    pub fn to(signer: &StoredKey, jwks_max_age: Span, now: DateTime<Utc>) -> Self {
        let cache = jwks_max_age.max(VERIFIER_MIN_CACHE).to_chrono();
        let until = signer.publish_at + cache;
        Handover {
            kid: signer.kid.clone(),
            published_at: signer.publish_at,
            published_s_ago: (now - signer.publish_at).num_seconds().max(0),
            caches_may_refuse_until: (until > now).then_some(until),
        }
    }

    /// The log line of the hand-over: a warning while caches may refuse
    /// the new signer, information once none can.
    pub fn log(&self) {
        match self.caches_may_refuse_until {
            Some(until) => tracing::warn!(
                kid = %self.kid,
                published_s_ago = self.published_s_ago,
                %until,
                "the new signer was published {}s ago: verifiers that cached the JWKS before that may refuse its assertions until {until} (jwks_max_age, or 60 s for verifiers such as oidc-provider)",
                self.published_s_ago
            ),
            None => tracing::info!(
                kid = %self.kid,
                published_s_ago = self.published_s_ago,
                "the new signer was published {}s ago, longer than any cached JWKS lives: verifiers know it",
                self.published_s_ago
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::types::{Alg, KeyState, SetName};

    fn key(published: DateTime<Utc>) -> StoredKey {
        StoredKey {
            set: SetName::new("default").unwrap(),
            alg: Alg::Es384,
            kid: Kid::build(&SetName::new("default").unwrap(), Alg::Es384, 2, "abcdefgh"),
            version: 2,
            state: KeyState::Active,
            public_jwk: String::new(),
            sealed_private: None,
            backend: "software".into(),
            backend_ref: None,
            created_at: published,
            publish_at: published,
            activate_at: None,
            deactivate_at: None,
            retire_at: None,
            emergency: true,
        }
    }

    #[test]
    fn a_key_published_within_max_age_may_be_refused_until_max_age_after_publication() {
        let published = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let now = published + chrono::Duration::seconds(90);
        let h = Handover::to(&key(published), Span::from_secs(3600), now);
        assert_eq!(h.published_s_ago, 90);
        assert_eq!(
            h.caches_may_refuse_until,
            Some(published + chrono::Duration::seconds(3600))
        );
    }

    #[test]
    fn a_short_max_age_still_counts_the_verifiers_60_second_floor() {
        let published = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let now = published + chrono::Duration::seconds(5);
        let h = Handover::to(&key(published), Span::from_secs(0), now);
        assert_eq!(
            h.caches_may_refuse_until,
            Some(published + chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn a_key_published_longer_ago_than_any_cache_lives_is_known_to_verifiers() {
        let published = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let now = published + chrono::Duration::seconds(3600);
        let h = Handover::to(&key(published), Span::from_secs(3600), now);
        assert_eq!(h.published_s_ago, 3600);
        assert_eq!(h.caches_may_refuse_until, None);
    }
}
