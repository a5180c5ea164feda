//! The aws-lc-rs backend of `keys`: the only place (with `seal`) where
//! `aws_lc_rs` is named. Nothing here is public outside `keys`; backend
//! errors are turned into `KeyError` before they leave, and only their static
//! reason strings (never key bytes) survive.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_SHA384, RsaPublicKeyComponents, UnparsedPublicKey,
};

use super::material::{EC_COORD_LEN, KeyError, PublicKey};
use crate::keys::secret::SecretBytes;
use crate::types::Alg;

/// A parsed private key, ready to sign.
pub(super) enum Inner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// Generates an RSA key of `bits` and returns its PKCS#8 v1 encoding.
pub(super) fn generate_rsa(bits: u32) -> Result<SecretBytes, KeyError> {
    let size = match bits {
        2048 => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        8192 => KeySize::Rsa8192,
        other => return Err(KeyError::UnsupportedRsaBits(other)),
    };
    let pair = RsaKeyPair::generate(size).map_err(|_| KeyError::Generate { alg: Alg::Rs384 })?;
    // `Pkcs8V1Der` zeroizes its own buffer on drop; we keep one copy.
    let der: Pkcs8V1Der<'static> = pair
        .as_der()
        .map_err(|_| KeyError::Generate { alg: Alg::Rs384 })?;
    Ok(SecretBytes::copy_from(der.as_ref()))
}

/// Generates a P-384 key and returns its PKCS#8 v1 encoding.
pub(super) fn generate_ec384() -> Result<SecretBytes, KeyError> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
        .map_err(|_| KeyError::Generate { alg: Alg::Es384 })?;
    // `Document` zeroizes its own buffer on drop; we keep one copy.
    let doc = pair
        .to_pkcs8v1()
        .map_err(|_| KeyError::Generate { alg: Alg::Es384 })?;
    Ok(SecretBytes::copy_from(doc.as_ref()))
}

/// Parses a PKCS#8 document for `alg` and extracts its public half.
pub(super) fn parse(alg: Alg, pkcs8: &[u8]) -> Result<(Inner, PublicKey), &'static str> {
    match alg {
        Alg::Rs384 => {
            let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| e.description_())?;
            let public = pair.public_key();
            let public = PublicKey::Rsa {
                n: public.modulus().big_endian_without_leading_zero().to_vec(),
                e: public.exponent().big_endian_without_leading_zero().to_vec(),
            };
            Ok((Inner::Rsa(pair), public))
        }
        Alg::Es384 => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8)
                .map_err(|e| e.description_())?;
            let point = pair.public_key().as_ref();
            // Uncompressed SEC1 point: 0x04 || x || y.
            if point.len() != 1 + 2 * EC_COORD_LEN || point[0] != 0x04 {
                return Err("unexpected P-384 public key encoding");
            }
            let mut x = [0u8; EC_COORD_LEN];
            let mut y = [0u8; EC_COORD_LEN];
            x.copy_from_slice(&point[1..1 + EC_COORD_LEN]);
            y.copy_from_slice(&point[1 + EC_COORD_LEN..]);
            Ok((Inner::Ec(pair), PublicKey::Ec384 { x, y }))
        }
    }
}

/// Signs `message`: RS384 PKCS#1 v1.5 / SHA-384, or ES384 fixed r||s.
pub(super) fn sign(inner: &Inner, message: &[u8]) -> Result<Vec<u8>, ()> {
    let rng = SystemRandom::new();
    match inner {
        Inner::Rsa(pair) => {
            let mut sig = vec![0u8; pair.public_modulus_len()];
            pair.sign(&RSA_PKCS1_SHA384, &rng, message, &mut sig)
                .map_err(|_| ())?;
            Ok(sig)
        }
        Inner::Ec(pair) => {
            let sig = pair.sign(&rng, message).map_err(|_| ())?;
            Ok(sig.as_ref().to_vec())
        }
    }
}

/// Verifies a signature against our own `PublicKey` value (not the backend's
/// parsed key), so a mistake in extracting the public half is caught before
/// the key is ever published.
pub(super) fn verify(public: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    match public {
        PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
            .verify(&RSA_PKCS1_2048_8192_SHA384, message, sig)
            .is_ok(),
        PublicKey::Ec384 { x, y } => {
            let mut point = Vec::with_capacity(1 + 2 * EC_COORD_LEN);
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
                .verify(message, sig)
                .is_ok()
        }
    }
}

/// Fills `buf` from the system CSPRNG.
pub(super) fn fill_random(buf: &mut [u8]) -> Result<(), ()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| ())
}
