//! What key material looks like outside the crypto backend: a freshly
//! generated key and why a key operation failed (the public half has its
//! own module, `public`, which every backend shares).

use std::fmt;

pub use super::public::{EC_COORD_LEN, ES384_SIGNATURE_LEN, PublicKey, RSA_BITS};
use super::secret::SecretBytes;
use crate::types::{Alg, Kid};

/// Why a key operation failed. Messages name the algorithm or kid and the
/// backend's static reason; they never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An RSA size outside [`RSA_BITS`].
    #[error("rsa_bits = {0}: must be one of 2048, 3072, 4096, 8192")]
    UnsupportedRsaBits(u32),
    /// The backend failed to generate or encode a new key.
    #[error("generating a new {alg} key failed in the crypto backend")]
    Generate {
        /// Algorithm of the key being generated.
        alg: Alg,
    },
    /// A freshly generated key failed its pairwise consistency check (its
    /// extracted public half does not verify its own signature). The key is
    /// discarded, never published.
    #[error("a freshly generated {alg} key failed its self-test and was discarded")]
    SelfTest {
        /// Algorithm of the key being generated.
        alg: Alg,
    },
    /// A PKCS#8 document could not be used as an `alg` signing key: corrupt,
    /// of another key type, or too weak.
    #[error("private key for {kid} is not a usable {alg} PKCS#8 key: {reason}")]
    InvalidPkcs8 {
        /// Algorithm the key was expected to have.
        alg: Alg,
        /// Kid of the key.
        kid: Kid,
        /// The backend's static reason (e.g. `WrongAlgorithm`).
        reason: &'static str,
    },
    /// Signing failed in the backend.
    #[error("signing with {kid} failed in the crypto backend")]
    Sign {
        /// Kid of the key.
        kid: Kid,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A policy names a backend that is not configured.
    #[error("no key backend named {0:?} is configured ([backends.NAME] in jwksd.toml)")]
    UnknownBackend(String),
    /// A PKCS#11 token failed or is out of reach (the message names the
    /// backend and the token's return code).
    #[error(transparent)]
    Token(#[from] super::pkcs11::error::Pkcs11Error),
    /// The store lets a key of this token sign, but the token holds no
    /// private object under its kid: the token was swapped or reset, its
    /// storage is gone, or the object was destroyed outside jwksd.
    /// Signing answers 503 and tries again on the next request (the
    /// object is never recreated: a new key comes only from a rotation).
    #[error(
        "backend {backend:?}: the token holds no private key for {kid} (token replaced or reset, its storage gone, or the object destroyed outside jwksd)"
    )]
    TokenKeyMissing {
        /// The backend's name.
        backend: String,
        /// Kid of the key.
        kid: Kid,
    },
    /// A token's signature did not verify against the key published under
    /// its kid: the token holds another key under that id, or faulted.
    #[error(
        "backend {backend:?}: the signature of {kid} does not verify against its published key; not using it (does the token hold another object under this id?)"
    )]
    TokenMismatch {
        /// The backend's name.
        backend: String,
        /// Kid of the key.
        kid: Kid,
    },
}

impl KeyError {
    /// Whether the key's backend is out of reach for now (a token absent,
    /// logged out or failing): signing answers 503 and resumes by itself
    /// once the backend is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            KeyError::Token(e) => e.is_unavailable(),
            KeyError::TokenKeyMissing { .. } => true,
            _ => false,
        }
    }
}

/// A new key: its PKCS#8 private half (to be sealed at once) and public half.
pub struct GeneratedKey {
    /// Algorithm the key is for.
    pub alg: Alg,
    /// The private key, PKCS#8 v1 DER. Zeroized on drop; seal before storing.
    pub pkcs8: SecretBytes,
    /// The public half, for the JWK and the thumbprint.
    pub public: PublicKey,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}
