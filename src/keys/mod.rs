//! Key material: generation and signing ([`SigningKey`], the aws-lc-rs
//! backend in `aws_lc`), where new keys come from ([`source`]), sealing
//! private halves under the master key ([`seal`]) and the one container for
//! secret bytes ([`secret`]). Nothing outside this folder names the crypto
//! backend.
//!
//! Owns: generating RS384 (RSA) and ES384 (P-384) keys as PKCS#8, parsing a
//! PKCS#8 key once into a [`SigningKey`], producing JOSE signature bytes, and
//! the CSPRNG ([`fill_random`]).
//! Does not own: JWK/JWS encoding (`jose`), at-rest encryption (`seal`),
//! storage, or deciding which key signs (`lifecycle`). Backend types never
//! appear in this module's public signatures; they stay in the private
//! `aws_lc` submodule.

use std::fmt;

use crate::keys::secret::SecretBytes;
use crate::types::{Alg, Kid};

mod aws_lc;
pub mod seal;
pub mod secret;
pub mod source;

/// Length in bytes of one P-384 coordinate (and of `r` and `s`).
pub const EC_COORD_LEN: usize = 48;

/// Length in bytes of an ES384 JOSE signature (`r || s`).
pub const ES384_SIGNATURE_LEN: usize = 2 * EC_COORD_LEN;

/// RSA modulus sizes [`generate`] accepts, in bits.
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

/// Generates a new key for `alg`.
///
/// `rsa_bits` is the RSA modulus size (one of [`RSA_BITS`], else
/// [`KeyError::UnsupportedRsaBits`]); it is ignored for ES384. Each key
/// passes a pairwise self-test (sign, then verify with the extracted public
/// half) before it is returned.
///
/// Blocking: RSA-4096 takes up to seconds (8192 much longer), so callers run
/// it on a blocking thread, never on the request path.
pub fn generate(alg: Alg, rsa_bits: u32) -> Result<GeneratedKey, KeyError> {
    let pkcs8 = match alg {
        Alg::Rs384 => aws_lc::generate_rsa(rsa_bits)?,
        Alg::Es384 => aws_lc::generate_ec384()?,
    };
    let (inner, public) =
        aws_lc::parse(alg, pkcs8.expose()).map_err(|_| KeyError::Generate { alg })?;
    let probe = b"jwksd key self-test";
    let sig = aws_lc::sign(&inner, probe).map_err(|_| KeyError::Generate { alg })?;
    if !aws_lc::verify(&public, probe, &sig) {
        return Err(KeyError::SelfTest { alg });
    }
    Ok(GeneratedKey { alg, pkcs8, public })
}

/// A private key parsed once from PKCS#8, ready to sign many times.
///
/// `Debug` prints only `SigningKey { alg, kid }`. The backend zeroizes the
/// parsed key material when this value is dropped.
pub struct SigningKey {
    alg: Alg,
    kid: Kid,
    public: PublicKey,
    inner: aws_lc::Inner,
}

impl SigningKey {
    /// Parses `pkcs8` as an `alg` key (RSA for RS384, P-384 for ES384).
    ///
    /// Errors with [`KeyError::InvalidPkcs8`] if the document is corrupt, of
    /// the other key type, or an RSA key under 2048 bits.
    pub fn from_pkcs8(alg: Alg, kid: Kid, pkcs8: &SecretBytes) -> Result<Self, KeyError> {
        match aws_lc::parse(alg, pkcs8.expose()) {
            Ok((inner, public)) => Ok(SigningKey {
                alg,
                kid,
                public,
                inner,
            }),
            Err(reason) => Err(KeyError::InvalidPkcs8 { alg, kid, reason }),
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The key's id, as published in the JWKS and the JWS header.
    pub fn kid(&self) -> &Kid {
        &self.kid
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// JOSE signature bytes over `message`: for RS384, RSASSA-PKCS1-v1_5 with
    /// SHA-384 (modulus length, e.g. 512 bytes for RSA-4096); for ES384,
    /// ECDSA P-384 with SHA-384 as `r || s`, always 96 bytes, never DER.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let sign_error = || KeyError::Sign {
            kid: self.kid.clone(),
        };
        let sig = aws_lc::sign(&self.inner, message).map_err(|_| sign_error())?;
        if self.alg == Alg::Es384 && sig.len() != ES384_SIGNATURE_LEN {
            return Err(sign_error());
        }
        Ok(sig)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

/// Fills `buf` with bytes from the system CSPRNG (for jtis, nonces, keys).
pub fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    aws_lc::fill_random(buf).map_err(|_| KeyError::Random)
}

#[cfg(test)]
mod tests;
