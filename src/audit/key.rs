//! The audit chain's key: derived from the master key, named by a public
//! id, and carried across `seal rotate-master` by wrapping the old key under
//! the new one.
//!
//! Owns: deriving the key (HKDF-SHA-256 of the master key, label
//! [`CHAIN_LABEL`]), its id, MACs with it, and wrapping/unwrapping an older
//! key. Does not own: what a MAC covers (`chain`) or where wraps are kept
//! (the store's `meta`).
//!
//! Why wraps: after a rotation, `audit verify` has only the current master
//! key, yet the records before the switch are MAC'd under the key derived
//! from the old one. The rotation (which holds both master keys) stores the
//! old chain key encrypted (AES-256-GCM) under a key derived from the new
//! chain key, so the current key opens the one before it, that one the one
//! before, and so on back to the first. Whoever holds the current master key
//! can therefore read every older chain key; that grants nothing new, since
//! the holder of the current key can already forge every record from here
//! on, and the old keys do not lead forward to it.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::keys::seal::{MasterKey, derive_key};
use crate::keys::secret::SecretBytes;
use crate::keys::signing::fill_random;

/// The HKDF label of the audit chain's key: its own, so the chain key is
/// independent of every other use of the master key.
pub const CHAIN_LABEL: &[u8] = b"jwksd audit chain v1";
/// What the key's public id is the MAC of.
const ID_LABEL: &[u8] = b"jwksd audit chain key id v1";
/// The HKDF label of the key that wraps the previous chain key.
const WRAP_LABEL: &[u8] = b"jwksd audit chain key wrap v1";
const WRAP_AAD: &[u8] = b"jwksd audit chain key wrap v1:";
const TAG_LEN: usize = 16;

/// Why an older chain key could not be unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The wrap was not made by the newer key, or was changed.
    #[error("the wrapped audit key {0} does not open under the newer audit key")]
    Unauthentic(String),
    /// Random bytes for the nonce could not be drawn.
    #[error("no random bytes for wrapping an audit key")]
    Random,
}

/// The key that MACs the audit chain (HMAC-SHA-256).
///
/// The raw bytes are kept only to be wrapped at a rotation; they are
/// zeroized on drop ([`SecretBytes`]), and aws-lc cleanses the HMAC context
/// when `mac` is dropped. `Debug` prints the public id only.
pub struct AuditKey {
    raw: SecretBytes,
    mac: hmac::Key,
    id: String,
}

impl AuditKey {
    /// The chain key of `master`.
    pub fn derive(master: &MasterKey) -> AuditKey {
        AuditKey::from_secret(master.derive(CHAIN_LABEL))
    }

    fn from_secret(raw: SecretBytes) -> AuditKey {
        let mac = hmac::Key::new(hmac::HMAC_SHA256, raw.expose());
        // 64 bits of a MAC under the key: names the key in the store and in
        // messages, reveals nothing of it.
        let id = super::hex::hex(&hmac::sign(&mac, ID_LABEL).as_ref()[..8]);
        AuditKey { raw, mac, id }
    }

    /// The key's public id (16 hex digits), kept beside every record it MACs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A MAC computation under this key.
    pub fn context(&self) -> hmac::Context {
        hmac::Context::with_key(&self.mac)
    }

    /// `older` encrypted under a key derived from this one:
    /// base64url(nonce || ciphertext || tag), the ids of both keys bound as
    /// associated data.
    pub fn wrap(&self, older: &AuditKey) -> Result<String, WrapError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce).map_err(|_| WrapError::Random)?;
        let mut out =
            zeroize::Zeroizing::new(Vec::with_capacity(NONCE_LEN + older.raw.len() + TAG_LEN));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(older.raw.expose());
        let tag = self
            .wrap_key()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.wrap_aad(older.id())),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| WrapError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(URL_SAFE_NO_PAD.encode(&out[..]))
    }

    /// Opens a [`wrap`](AuditKey::wrap) of the key named `older_id` made by
    /// this key; the key inside must have that id.
    pub fn unwrap(&self, older_id: &str, wrapped: &str) -> Result<AuditKey, WrapError> {
        let unauthentic = || WrapError::Unauthentic(older_id.to_owned());
        let mut buf = zeroize::Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(wrapped.as_bytes())
                .map_err(|_| unauthentic())?,
        );
        if buf.len() < NONCE_LEN + TAG_LEN {
            return Err(unauthentic());
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&buf[..NONCE_LEN]).map_err(|_| unauthentic())?;
        let len = self
            .wrap_key()
            .open_in_place(
                nonce,
                Aad::from(self.wrap_aad(older_id)),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| unauthentic())?
            .len();
        let key = AuditKey::from_secret(SecretBytes::copy_from(&buf[NONCE_LEN..NONCE_LEN + len]));
        if key.id != older_id {
            return Err(unauthentic());
        }
        Ok(key)
    }

    fn wrap_key(&self) -> LessSafeKey {
        let k = derive_key(self.raw.expose(), WRAP_LABEL);
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k.expose()).expect("a 32-byte AES-256 key"))
    }

    fn wrap_aad(&self, older_id: &str) -> Vec<u8> {
        [WRAP_AAD, older_id.as_bytes(), b":", self.id.as_bytes()].concat()
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey(id {}, redacted)", self.id)
    }
}

/// Every chain key `current` leads to: itself, and each older key whose
/// wrap a key already known opens. `wraps` are (older id, newer id, wrap)
/// as the store keeps them; one that does not open is skipped (a record
/// MAC'd under its key then fails as unknown).
pub struct ChainKeys<'a> {
    pub current: &'a AuditKey,
    older: Vec<AuditKey>,
}

impl<'a> ChainKeys<'a> {
    pub fn resolve(current: &'a AuditKey, wraps: &[(String, String, String)]) -> ChainKeys<'a> {
        let mut keys = ChainKeys {
            current,
            older: Vec::new(),
        };
        // A rotation adds one wrap: a few at most, so a quadratic walk is
        // fine and needs no ordering of the wraps.
        loop {
            let mut added = false;
            for (older, newer, wrapped) in wraps {
                if keys.get(older).is_some() {
                    continue;
                }
                let Some(opener) = keys.get(newer) else {
                    continue;
                };
                if let Ok(k) = opener.unwrap(older, wrapped) {
                    keys.older.push(k);
                    added = true;
                }
            }
            if !added {
                return keys;
            }
        }
    }

    /// The key with this id, if `current` leads to it.
    pub fn get(&self, id: &str) -> Option<&AuditKey> {
        std::iter::once(self.current)
            .chain(self.older.iter())
            .find(|k| k.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::generate().unwrap().0
    }

    #[test]
    fn keys_differ_per_master_key_and_are_stable() {
        let m = master();
        let (a, b) = (AuditKey::derive(&m), AuditKey::derive(&m));
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
        assert_ne!(a.id(), AuditKey::derive(&master()).id());
        // Not the master key itself, nor its fingerprint.
        assert_ne!(a.raw.expose(), m.derive(b"other label").expose());
        assert!(!format!("{a:?}").contains(&super::super::hex::hex(a.raw.expose())));
    }

    #[test]
    fn a_wrap_opens_only_under_the_newer_key_and_for_its_id() {
        let (old, new) = (AuditKey::derive(&master()), AuditKey::derive(&master()));
        let w = new.wrap(&old).unwrap();
        assert_eq!(new.unwrap(old.id(), &w).unwrap().id(), old.id());
        assert!(old.unwrap(old.id(), &w).is_err());
        assert!(new.unwrap(new.id(), &w).is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&w).unwrap();
        bytes[20] ^= 1;
        assert!(
            new.unwrap(old.id(), &URL_SAFE_NO_PAD.encode(bytes))
                .is_err()
        );
        let wraps = [(old.id().to_owned(), new.id().to_owned(), w)];
        assert!(ChainKeys::resolve(&new, &wraps).get(old.id()).is_some());
        assert!(ChainKeys::resolve(&old, &wraps).get(new.id()).is_none());
    }
}
