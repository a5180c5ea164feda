//! What key material looks like outside the crypto backend: the public
//! half of a key, a freshly generated key, and why a key operation failed.

use std::fmt;

use super::secret::SecretBytes;
use crate::types::{Alg, Kid};

/// Length in bytes of one P-384 coordinate (and of `r` and `s`).
pub const EC_COORD_LEN: usize = 48;

/// Length in bytes of an ES384 JOSE signature (`r || s`).
pub const ES384_SIGNATURE_LEN: usize = 2 * EC_COORD_LEN;

/// RSA modulus sizes [`generate`](super::signing::generate) accepts, in bits.
pub const RSA_BITS: [u32; 4] = [2048, 3072, 4096, 8192];

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
}

/// The public half of a key, as raw big-endian integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA modulus `n` and public exponent `e`, big-endian without leading
    /// zero bytes.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// A P-384 point, affine coordinates, big-endian, fixed 48 bytes each.
    Ec384 {
        /// X coordinate.
        x: [u8; EC_COORD_LEN],
        /// Y coordinate.
        y: [u8; EC_COORD_LEN],
    },
}

impl PublicKey {
    /// The algorithm this key verifies: RSA keys are RS384, P-384 keys ES384.
    pub fn alg(&self) -> Alg {
        match self {
            PublicKey::Rsa { .. } => Alg::Rs384,
            PublicKey::Ec384 { .. } => Alg::Es384,
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
