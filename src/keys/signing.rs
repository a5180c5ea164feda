//! Generating keys and signing with them, through the aws-lc-rs backend
//! (`aws_lc`), whose types never appear in these signatures.

use std::fmt;
use std::sync::Arc;

use super::aws_lc;
use super::material::{ES384_SIGNATURE_LEN, GeneratedKey, KeyError, PublicKey};
use super::pkcs11::connection::Pkcs11Token;
use super::pkcs11::error::Pkcs11Error;
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

/// A key ready to sign many times: a private key parsed once from PKCS#8
/// (software), or a key object in a PKCS#11 token.
///
/// `Debug` prints only `SigningKey { alg, kid, backend }`. aws-lc-rs
/// zeroizes parsed key material when this value is dropped; a token key
/// never leaves its token.
pub struct SigningKey {
    alg: Alg,
    kid: Kid,
    public: PublicKey,
    inner: Held,
}

/// Where the private half of a [`SigningKey`] is.
enum Held {
    Software(aws_lc::Inner),
    Token(Arc<Pkcs11Token>),
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
                inner: Held::Software(inner),
            }),
            Err(reason) => Err(KeyError::InvalidPkcs8 { alg, kid, reason }),
        }
    }

    /// The key object `kid` of `token`, which publishes `public` (the JWK
    /// the store holds). Nothing is asked of the token here, so a token
    /// that is down does not keep the JWKS from being served; every
    /// signature it makes is checked against `public` before it is used.
    pub fn in_token(alg: Alg, kid: Kid, public: PublicKey, token: Arc<Pkcs11Token>) -> Self {
        SigningKey {
            alg,
            kid,
            public,
            inner: Held::Token(token),
        }
    }

    /// Whether a signature is cheap enough to make on an async runtime
    /// thread: a software P-384 signature (tens of microseconds). RSA and
    /// every token call block for milliseconds and belong on the signing
    /// threads.
    pub fn signs_inline(&self) -> bool {
        matches!((&self.inner, self.alg), (Held::Software(_), Alg::Es384))
    }

    /// The backend holding the private half: `software`, or the name of
    /// the token's `[backends.NAME]` table.
    pub fn backend(&self) -> &str {
        match &self.inner {
            Held::Software(_) => crate::config::policy::SOFTWARE_BACKEND,
            Held::Token(token) => token.name(),
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
    ///
    /// A token's signature is verified against the published public key
    /// before it is returned: a token that signs with another object than
    /// the store names, or a faulty RSA-CRT signature (which can reveal the
    /// private key), never leaves. Verifying costs a few percent of a
    /// token signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let sign_error = || KeyError::Sign {
            kid: self.kid.clone(),
        };
        let sig = match &self.inner {
            Held::Software(inner) => aws_lc::sign(inner, message).map_err(|_| sign_error())?,
            Held::Token(token) => {
                let sig = token
                    .sign(&self.kid, self.alg, message)
                    .map_err(|e| match e {
                        Pkcs11Error::KeyNotFound { .. } => {
                            let missing = KeyError::TokenKeyMissing {
                                backend: token.name().to_owned(),
                                kid: self.kid.clone(),
                            };
                            // The store says this key may sign: a token
                            // without it is not the token it should be
                            // (storage gone, reset, swapped). Down until a
                            // fresh connection finds the key again.
                            token.mark_down(missing.to_string());
                            missing
                        }
                        other => KeyError::Token(other),
                    })?;
                if !aws_lc::verify(&self.public, message, &sig) {
                    return Err(KeyError::TokenMismatch {
                        backend: token.name().to_owned(),
                        kid: self.kid.clone(),
                    });
                }
                sig
            }
        };
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
            .field("backend", &self.backend())
            .finish()
    }
}

/// Fills `buf` with bytes from the system CSPRNG (for jtis, nonces, keys).
pub fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    aws_lc::fill_random(buf).map_err(|_| KeyError::Random)
}
