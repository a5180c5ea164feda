//! What this replica serves, in memory: per set, the JWKS bytes with their
//! ETag and the unsealed active signing keys. Rebuilt from the store after
//! every change and swapped whole, so readers never see half a change and
//! never wait for the store (signing and JWKS go on while it is down).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::http::HeaderValue;
use prometheus_client::metrics::counter::Counter;

use crate::config::live::LivePolicies;
use crate::config::policy::Policies;
use crate::config::policy::SOFTWARE_BACKEND;
use crate::jose::{Jwk, JwksDocument, encode_jwks};
use crate::keys::SigningKey;
use crate::keys::backend::Backends;
use crate::keys::seal::MasterKey;
use crate::lifecycle::model::StoredKey;
use crate::store::{Store, StoreError};
use crate::types::{Alg, KeyState, SetName};

/// One set as served.
#[derive(Debug, Clone)]
pub struct SetView {
    /// `None` until the set has keys: the endpoint answers 503 then.
    pub jwks: Option<JwksDocument>,
    /// The answer's `ETag` and `Cache-Control` header values, built once
    /// per snapshot (key change or policy reload) rather than formatted and
    /// validated on every request: the JWKS handler only clones them
    /// (reference-counted, no copy). `None` exactly when `jwks` is.
    pub headers: Option<JwksHeaders>,
    /// The one signer per alg.
    pub signers: BTreeMap<Alg, Arc<SigningKey>>,
}

/// Precomputed header values of one set's JWKS answer.
#[derive(Debug, Clone)]
pub struct JwksHeaders {
    /// The strong ETag, quotes included.
    pub etag: HeaderValue,
    /// `public, max-age=<jwks_max_age in seconds>`.
    pub cache_control: HeaderValue,
}

impl JwksHeaders {
    fn new(doc: &JwksDocument, max_age_s: u64) -> Option<JwksHeaders> {
        Some(JwksHeaders {
            // The ETag is base64url in quotes: always a valid header value.
            etag: HeaderValue::from_str(&doc.etag).ok()?,
            cache_control: HeaderValue::from_str(&format!("public, max-age={max_age_s}")).ok()?,
        })
    }
}

/// Everything served, at one store revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub sets: BTreeMap<SetName, SetView>,
    /// All keys of all sets (public fields only are ever shown).
    pub keys: Arc<Vec<StoredKey>>,
}

/// Why a refresh failed; the previous snapshot stays in force.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key {kid}: stored public JWK unreadable: {reason}")]
    Jwk { kid: String, reason: String },
    #[error("key {kid}: cannot unseal its private half: {reason}")]
    Unseal { kid: String, reason: String },
    #[error(
        "key {kid}: its private half does not match the public JWK stored for it; not signing with it (was the store altered?)"
    )]
    Mismatch { kid: String },
}

/// The swappable snapshot, and where it is rebuilt from.
pub struct Keyring {
    current: RwLock<Arc<Snapshot>>,
    store: Arc<dyn Store>,
    policies: LivePolicies,
    master: Arc<MasterKey>,
    /// The tokens that hold the private halves of non-software keys.
    backends: Arc<Backends>,
    /// Bumped when a refresh fails (`jwksd_store_errors`).
    store_errors: Counter,
}

impl Keyring {
    /// An empty keyring (nothing served) that refreshes from `store`, with
    /// the policies in force and the master key that opens private halves.
    pub fn new(
        store: Arc<dyn Store>,
        policies: LivePolicies,
        master: Arc<MasterKey>,
        backends: Arc<Backends>,
        store_errors: Counter,
    ) -> Self {
        Keyring {
            current: RwLock::default(),
            store,
            policies,
            master,
            backends,
            store_errors,
        }
    }

    /// The snapshot in force (cheap: one `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds the snapshot from the store under the policies in force.
    /// Signing keys already unsealed are reused, so a refresh costs one query
    /// and the JWKS encoding. On failure the previous snapshot stays.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>, KeyringError> {
        let result = self.rebuild().await;
        if result.is_err() {
            self.store_errors.inc();
        }
        result
    }

    async fn rebuild(&self) -> Result<Arc<Snapshot>, KeyringError> {
        let revision = self.store.revision().await?;
        let keys = self.store.keys().await?;
        let old = self.snapshot();
        let policies = self.policies.current();
        let openers = Openers {
            master: &self.master,
            backends: &self.backends,
        };
        let snapshot = Arc::new(build(revision, keys, &policies, &openers, &old)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
        Ok(snapshot)
    }
}

fn build(
    revision: i64,
    keys: Vec<StoredKey>,
    policies: &Policies,
    openers: &Openers<'_>,
    old: &Snapshot,
) -> Result<Snapshot, KeyringError> {
    let mut sets = BTreeMap::new();
    for policy in policies.iter() {
        let own: Vec<&StoredKey> = keys.iter().filter(|k| k.set == policy.name).collect();
        let mut jwks = Vec::new();
        let mut signers = BTreeMap::new();
        for k in &own {
            if !k.state.is_published() {
                continue;
            }
            let jwk = parse_jwk(k)?;
            if k.state == KeyState::Active && policy.algorithms.contains(&k.alg) {
                let reused = old
                    .sets
                    .get(&k.set)
                    .and_then(|s| s.signers.get(&k.alg))
                    .filter(|s| s.kid() == &k.kid)
                    .cloned();
                let signer = match reused {
                    Some(s) => s,
                    None => Arc::new(openers.signer(k, &jwk)?),
                };
                signers.insert(k.alg, signer);
            }
            jwks.push(jwk);
        }
        let jwks = (!jwks.is_empty()).then(|| encode_jwks(&jwks));
        let headers = jwks
            .as_ref()
            .and_then(|d| JwksHeaders::new(d, policy.jwks_max_age.as_secs()));
        let view = SetView {
            jwks,
            headers,
            signers,
        };
        sets.insert(policy.name.clone(), view);
    }
    Ok(Snapshot {
        revision,
        sets,
        keys: Arc::new(keys),
    })
}

/// The public JWK a stored key publishes.
fn parse_jwk(k: &StoredKey) -> Result<Jwk, KeyringError> {
    serde_json::from_str(&k.public_jwk).map_err(|e| KeyringError::Jwk {
        kid: k.kid.to_string(),
        reason: e.to_string(),
    })
}

/// What opens the private halves of active keys: the master key for
/// sealed ones, the backends for keys held in a token.
struct Openers<'a> {
    master: &'a MasterKey,
    backends: &'a Backends,
}

impl Openers<'_> {
    /// The signing key of `k`, which publishes `published` (its parsed
    /// `public_jwk`), from wherever its private half is.
    fn signer(&self, k: &StoredKey, published: &Jwk) -> Result<SigningKey, KeyringError> {
        if k.backend == SOFTWARE_BACKEND {
            return unseal(k, published, self.master);
        }
        let err = |reason: String| KeyringError::Unseal {
            kid: k.kid.to_string(),
            reason,
        };
        let token = self.backends.token(&k.backend).ok_or_else(|| {
            err(format!(
                "it is held in backend {:?}, which jwksd.toml does not define ([backends.{}])",
                k.backend, k.backend
            ))
        })?;
        if k.backend_ref.as_deref() != Some(k.kid.as_str()) {
            return Err(err(format!(
                "the store names no object of backend {:?} for it",
                k.backend
            )));
        }
        // The token is not asked now (it may be down while the JWKS must
        // still be served): each signature is verified against this
        // published key instead (`SigningKey::sign`).
        let public = published
            .public_key()
            .map_err(|reason| err(format!("its published JWK is unusable: {reason}")))?;
        Ok(SigningKey::in_token(
            k.alg,
            k.kid.clone(),
            public,
            token.clone(),
        ))
    }
}

/// The signing key of software key `k`, which publishes `published` (its
/// parsed `public_jwk`).
fn unseal(k: &StoredKey, published: &Jwk, master: &MasterKey) -> Result<SigningKey, KeyringError> {
    let err = |reason: String| KeyringError::Unseal {
        kid: k.kid.to_string(),
        reason,
    };
    let sealed = k
        .sealed_private
        .as_deref()
        .ok_or_else(|| err("the store holds no private half".into()))?;
    let pkcs8 = master
        .open(&k.kid, sealed)
        .map_err(|e| err(e.to_string()))?;
    let signer =
        SigningKey::from_pkcs8(k.alg, k.kid.clone(), &pkcs8).map_err(|e| err(e.to_string()))?;
    // Verifiers check signatures against the JWK published under this kid:
    // a private half that does not match it (a row written by hand, a
    // swapped blob) would sign assertions that no verifier accepts, or that
    // one accepts against a key nobody meant to publish.
    let own = Jwk::from_public(&k.kid, k.alg, signer.public());
    if !same_key(&own, published) {
        return Err(KeyringError::Mismatch {
            kid: k.kid.to_string(),
        });
    }
    Ok(signer)
}

/// Whether two JWKs carry the same key under the same kid. Only the key
/// material and the kid count: descriptive members (`use`, `alg`) may be
/// written differently by an older version for the same key.
fn same_key(a: &Jwk, b: &Jwk) -> bool {
    (&a.kid, &a.kty, &a.n, &a.e, &a.crv, &a.x, &a.y)
        == (&b.kid, &b.kty, &b.n, &b.e, &b.crv, &b.x, &b.y)
}

/// The JWKS of `set` exactly as the HTTP endpoint serves it, read straight
/// from the store (for `jwksd jwks`); `None` when the set has no published key.
pub async fn published_jwks(
    store: &dyn Store,
    set: &str,
) -> Result<Option<JwksDocument>, KeyringError> {
    let mut jwks = Vec::new();
    for k in store.keys().await? {
        if k.set.as_str() != set || !k.state.is_published() {
            continue;
        }
        jwks.push(parse_jwk(&k)?);
    }
    Ok((!jwks.is_empty()).then(|| encode_jwks(&jwks)))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::keys::generate;
    use crate::types::Kid;

    /// A stored active ES384 key: `private` sealed, `public`'s JWK published.
    fn stored(master: &MasterKey, kid: &Kid, private: &SecretKey, public: &SecretKey) -> StoredKey {
        let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let jwk = Jwk::from_public(kid, Alg::Es384, &public.public);
        StoredKey {
            set: SetName::new("default").unwrap(),
            alg: Alg::Es384,
            kid: kid.clone(),
            version: 1,
            state: KeyState::Active,
            public_jwk: serde_json::to_string(&jwk).unwrap(),
            sealed_private: Some(master.seal(kid, &private.pkcs8).unwrap()),
            backend: "software".into(),
            backend_ref: None,
            created_at: t,
            publish_at: t,
            activate_at: Some(t),
            deactivate_at: None,
            retire_at: None,
            emergency: false,
        }
    }

    type SecretKey = crate::keys::GeneratedKey;

    #[test]
    fn a_private_half_is_used_only_under_the_jwk_of_its_own_public_half() {
        let (master, _) = MasterKey::generate().unwrap();
        let kid = Kid::from_stored("default-es384-v1-0123abcd");
        let (a, b) = (
            generate(Alg::Es384, 0).unwrap(),
            generate(Alg::Es384, 0).unwrap(),
        );
        let matching = stored(&master, &kid, &a, &a);
        let signer = unseal(&matching, &parse_jwk(&matching).unwrap(), &master).unwrap();
        assert_eq!(signer.kid(), &kid);
        let swapped = stored(&master, &kid, &a, &b);
        let err = unseal(&swapped, &parse_jwk(&swapped).unwrap(), &master).unwrap_err();
        assert!(matches!(err, KeyringError::Mismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("does not match the public JWK"),
            "{err}"
        );
    }

    #[test]
    fn descriptive_members_written_otherwise_do_not_count_as_another_key() {
        let kid = Kid::from_stored("default-es384-v1-0123abcd");
        let a = generate(Alg::Es384, 0).unwrap();
        let jwk = Jwk::from_public(&kid, Alg::Es384, &a.public);
        let mut older = jwk.clone();
        older.use_ = String::new();
        assert!(same_key(&jwk, &older));
        let mut other_kid = jwk.clone();
        other_kid.kid.push('x');
        assert!(!same_key(&jwk, &other_kid));
    }
}
