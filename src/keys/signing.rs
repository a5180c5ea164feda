//! Generating keys and signing with them, through the aws-lc-rs backend
//! (`aws_lc`), whose types never appear in these signatures.

use std::fmt;

use super::aws_lc;
use super::material::{ES384_SIGNATURE_LEN, GeneratedKey, KeyError, PublicKey};
use super::secret::SecretBytes;
use crate::types::{Alg, Kid};

/// Generates a new key for `alg`.
///
/// `rsa_bits` is the RSA modulus size (one of [`RSA_BITS`](super::material::RSA_BITS), else
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
