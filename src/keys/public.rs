//! The public half of a key, as every backend (aws-lc-rs, PKCS#11 tokens)
//! hands it over: raw big-endian integers, no encoding.

use crate::types::Alg;

/// Length in bytes of one P-384 coordinate (and of `r` and `s`).
pub const EC_COORD_LEN: usize = 48;

/// Length in bytes of an ES384 JOSE signature (`r || s`).
pub const ES384_SIGNATURE_LEN: usize = 2 * EC_COORD_LEN;

/// RSA modulus sizes [`generate`](super::signing::generate) accepts, in bits.
pub const RSA_BITS: [u32; 4] = [2048, 3072, 4096, 8192];

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
