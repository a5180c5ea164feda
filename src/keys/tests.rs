//! Signatures made here are checked with independent implementations (the
//! `rsa` and `p384` crates), from the public members of the published JWK,
//! so a mistake in our encoding cannot hide behind the backend agreeing with
//! itself.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p384::ecdsa::signature::Verifier as _;

use super::*;
use crate::jose::{self, AssertionClaims, Jwk, JwtHeader};
use crate::keys::secret::SecretBytes;
use crate::types::{Alg, Kid, SetName};

fn b64d(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// One generated key per algorithm, shared by the tests (RSA generation is
/// the slow part).
fn rsa2048() -> &'static GeneratedKey {
    static KEY: OnceLock<GeneratedKey> = OnceLock::new();
    KEY.get_or_init(|| generate(Alg::Rs384, 2048).unwrap())
}

fn ec384() -> &'static GeneratedKey {
    static KEY: OnceLock<GeneratedKey> = OnceLock::new();
    KEY.get_or_init(|| generate(Alg::Es384, 0).unwrap())
}

fn signing_key(generated: &GeneratedKey) -> SigningKey {
    let set = SetName::new("default").unwrap();
    let kid = Kid::build(&set, generated.alg, 1, &jose::thumbprint(&generated.public));
    SigningKey::from_pkcs8(generated.alg, kid, &generated.pkcs8).unwrap()
}

fn jwk_of(key: &SigningKey) -> Jwk {
    Jwk::from_public(key.kid(), key.alg(), key.public())
}

/// Verifies with the `rsa` crate, from the JWK's `n` and `e` only.
fn rsa_verifies(jwk: &Jwk, message: &[u8], sig: &[u8]) -> bool {
    let n = rsa::BoxedUint::from_be_slice_vartime(&b64d(jwk.n.as_deref().unwrap()));
    let e = rsa::BoxedUint::from_be_slice_vartime(&b64d(jwk.e.as_deref().unwrap()));
    let public = rsa::PublicKey::new(n, e).unwrap();
    let verifier = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha384>::new(public);
    let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
        return false;
    };
    verifier.verify(message, &sig).is_ok()
}

/// Verifies with the `p384` crate, from the JWK's `x` and `y` only; the
/// signature must be the 96-byte JOSE form r||s.
fn p384_verifies(jwk: &Jwk, message: &[u8], sig: &[u8]) -> bool {
    assert_eq!(jwk.crv.as_deref(), Some("P-384"));
    let mut point = vec![0x04];
    point.extend(b64d(jwk.x.as_deref().unwrap()));
    point.extend(b64d(jwk.y.as_deref().unwrap()));
    let verifier = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    if sig.len() != ES384_SIGNATURE_LEN {
        return false;
    }
    let Ok(sig) = p384::ecdsa::Signature::from_slice(sig) else {
        return false;
    };
    verifier.verify(message, &sig).is_ok()
}

fn independent_verify(jwk: &Jwk, message: &[u8], sig: &[u8]) -> bool {
    match jwk.alg {
        Alg::Rs384 => rsa_verifies(jwk, message, sig),
        Alg::Es384 => p384_verifies(jwk, message, sig),
    }
}

#[test]
fn rs384_signatures_verify_with_the_rsa_crate() {
    let key = signing_key(rsa2048());
    let jwk = jwk_of(&key);
    let sig = key.sign(b"hello jwksd").unwrap();
    assert_eq!(sig.len(), 256);
    assert!(rsa_verifies(&jwk, b"hello jwksd", &sig));
}

#[test]
fn es384_signatures_verify_with_the_p384_crate_and_are_always_96_bytes() {
    let key = signing_key(ec384());
    let jwk = jwk_of(&key);
    for i in 0..20u8 {
        let message = [b'm', i];
        let sig = key.sign(&message).unwrap();
        assert_eq!(sig.len(), 96);
        assert!(p384_verifies(&jwk, &message, &sig));
    }
}

#[test]
fn a_tampered_message_or_signature_fails_verification() {
    for generated in [rsa2048(), ec384()] {
        let key = signing_key(generated);
        let jwk = jwk_of(&key);
        let sig = key.sign(b"pay 10 EUR").unwrap();
        assert!(independent_verify(&jwk, b"pay 10 EUR", &sig));
        assert!(!independent_verify(&jwk, b"pay 99 EUR", &sig));
        let mut bad = sig.clone();
        bad[10] ^= 0x01;
        assert!(!independent_verify(&jwk, b"pay 10 EUR", &bad));
    }
}

#[test]
fn signatures_do_not_verify_under_another_key() {
    let other = signing_key(&generate(Alg::Es384, 0).unwrap());
    let key = signing_key(ec384());
    let sig = key.sign(b"m").unwrap();
    assert!(!p384_verifies(&jwk_of(&other), b"m", &sig));
}

#[test]
fn full_assertions_verify_with_independent_crates() {
    for generated in [rsa2048(), ec384()] {
        let key = signing_key(generated);
        let header = JwtHeader {
            alg: key.alg(),
            kid: key.kid().clone(),
            jku: Some("https://keys.example.com/.well-known/jwks.json".into()),
        };
        let claims = AssertionClaims {
            iss: "my-backend-app".into(),
            sub: "my-backend-app".into(),
            aud: "https://ehr.example.com/oauth2/token".into(),
            iat: 1_700_000_000,
            exp: 1_700_000_300,
            jti: jose::new_jti().unwrap(),
        };
        let token = jose::encode_jws(&header, &claims, |input| key.sign(input)).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = b64d(sig);
        let jwk = jwk_of(&key);
        assert!(
            independent_verify(&jwk, input.as_bytes(), &sig),
            "{:?}",
            key
        );

        let head: serde_json::Value =
            serde_json::from_slice(&b64d(input.split('.').next().unwrap())).unwrap();
        assert_eq!(head["alg"], key.alg().as_str());
        assert_eq!(head["kid"], key.kid().as_str());
        assert_eq!(head["kid"], jwk.kid());
        assert_eq!(head["typ"], "JWT");

        let tampered = input.replacen('.', ".e", 1);
        assert!(!independent_verify(&jwk, tampered.as_bytes(), &sig));
    }
}

#[test]
fn rs384_4096_keys_sign_512_byte_signatures_that_verify() {
    let generated = generate(Alg::Rs384, 4096).unwrap();
    let PublicKey::Rsa { n, e } = &generated.public else {
        panic!("not an RSA key");
    };
    assert_eq!(n.len(), 512);
    assert_ne!(n[0], 0);
    assert_eq!(e.as_slice(), &[1, 0, 1]);
    let key = signing_key(&generated);
    let sig = key.sign(b"four thousand ninety-six").unwrap();
    assert_eq!(sig.len(), 512);
    assert!(rsa_verifies(
        &jwk_of(&key),
        b"four thousand ninety-six",
        &sig
    ));
}

#[test]
fn unsupported_rsa_sizes_are_refused() {
    for bits in [0, 1024, 2047, 4097, 16384] {
        let err = generate(Alg::Rs384, bits).unwrap_err();
        assert!(matches!(err, KeyError::UnsupportedRsaBits(b) if b == bits));
        assert!(err.to_string().contains(&bits.to_string()));
    }
}

#[test]
fn pkcs8_of_the_other_key_type_or_garbage_is_refused() {
    let kid = Kid::from_stored("k");
    let as_ec = SigningKey::from_pkcs8(Alg::Es384, kid.clone(), &rsa2048().pkcs8);
    assert!(matches!(
        as_ec,
        Err(KeyError::InvalidPkcs8 {
            alg: Alg::Es384,
            ..
        })
    ));
    let as_rsa = SigningKey::from_pkcs8(Alg::Rs384, kid.clone(), &ec384().pkcs8);
    assert!(matches!(
        as_rsa,
        Err(KeyError::InvalidPkcs8 {
            alg: Alg::Rs384,
            ..
        })
    ));
    let garbage = SecretBytes::copy_from(&[0x30, 0x03, 0x02, 0x01, 0x00]);
    let err = SigningKey::from_pkcs8(Alg::Rs384, kid, &garbage).unwrap_err();
    assert!(err.to_string().contains("k"));
}

#[test]
fn parsed_keys_report_the_generated_public_half() {
    for generated in [rsa2048(), ec384()] {
        let key = signing_key(generated);
        assert_eq!(key.public(), &generated.public);
        assert_eq!(key.alg(), generated.alg);
        assert_eq!(generated.public.alg(), generated.alg);
    }
}

#[test]
fn jwks_of_generated_keys_hold_no_private_member() {
    for generated in [rsa2048(), ec384()] {
        let text = serde_json::to_string(&jwk_of(&signing_key(generated))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(value.get(private).is_none(), "{private} in {text}");
            assert!(
                !text.contains(&format!("\"{private}\":")),
                "{private} in {text}"
            );
        }
        let doc = jose::encode_jwks(&[jwk_of(&signing_key(generated))]);
        let text = std::str::from_utf8(&doc.bytes).unwrap();
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                !text.contains(&format!("\"{private}\":")),
                "{private} in {text}"
            );
        }
    }
}

/// Renderings of a secret that must never show up in Debug output.
fn renderings(secret: &[u8]) -> Vec<String> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Any 12-byte window of the key, in every encoding, is enough to matter.
    let window = &secret[secret.len() - 12..];
    vec![
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        hex.clone(),
        hex.to_uppercase(),
        STANDARD.encode(window),
        URL_SAFE_NO_PAD.encode(window),
        window.iter().map(|b| format!("{b:02x}")).collect(),
        format!("{:?}", &window[..4])
            .trim_end_matches(']')
            .to_owned(),
    ]
}

#[test]
fn debug_output_of_keys_holds_no_key_bytes() {
    for generated in [rsa2048(), ec384()] {
        let key = signing_key(generated);
        let shown = [
            format!("{generated:?}"),
            format!("{generated:#?}"),
            format!("{key:?}"),
            format!("{key:#?}"),
            format!("{:?}", generated.pkcs8),
        ];
        for text in &shown {
            for secret in renderings(generated.pkcs8.expose()) {
                assert!(!text.contains(&secret), "{text} leaks {secret}");
            }
        }
        assert_eq!(
            format!("{key:?}"),
            format!(
                "SigningKey {{ alg: {:?}, kid: {:?}, backend: \"software\" }}",
                key.alg(),
                key.kid()
            )
        );
        assert!(shown[0].starts_with("GeneratedKey { alg:"));
    }
}

#[test]
fn key_errors_name_the_kid_but_hold_no_key_bytes() {
    let generated = rsa2048();
    let err = SigningKey::from_pkcs8(Alg::Es384, Kid::from_stored("kid-1"), &generated.pkcs8)
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("kid-1"));
    for secret in renderings(generated.pkcs8.expose()) {
        assert!(!text.contains(&secret));
    }
}

#[test]
fn signing_keys_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SigningKey>();
    assert_send_sync::<GeneratedKey>();
}

#[test]
fn fill_random_fills() {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    fill_random(&mut a).unwrap();
    fill_random(&mut b).unwrap();
    assert_ne!(a, b);
    assert_ne!(a, [0u8; 32]);
}
