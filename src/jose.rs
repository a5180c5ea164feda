//! JOSE encodings: JWK, JWKS documents with their ETag, RFC 7638 thumbprints
//! and JWS compact serialization of client assertions.
//!
//! Owns: the exact bytes that leave jwksd (JWKS documents, JWT headers and
//! claims) and the rules that make them identical on every replica.
//! Does not own: I/O, key material or signing itself (the caller passes a
//! signing closure, normally `keys::SigningKey::sign`), nor deciding claim
//! values (lifetime, audience checks live with the socket handlers). No
//! crypto backend is named here; hashing is SHA-256 from `sha2`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{self, KeyError, PublicKey};
use crate::types::{Alg, Kid};

/// Base64url without padding (RFC 7515 §2).
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A public JSON Web Key as published in the JWKS.
///
/// Members serialize in the order `kty, use, alg, kid`, then `n, e` (RSA) or
/// `crv, x, y` (EC); absent members are skipped. The type has no field for
/// any private member (`d`, `p`, `q`, `dp`, `dq`, `qi`), so it cannot carry
/// one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `RSA` or `EC`.
    pub kty: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// `RS384` or `ES384`.
    pub alg: Alg,
    /// The key id.
    pub kid: String,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC curve, `P-384`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC X coordinate, base64url of 48 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC Y coordinate, base64url of 48 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

impl Jwk {
    /// The JWK of a public key. `alg` must be the key's algorithm (RSA keys
    /// are RS384, P-384 keys ES384); if it is not, the key's own algorithm is
    /// published, since that is the only one it can verify.
    pub fn from_public(kid: &Kid, alg: Alg, public: &PublicKey) -> Jwk {
        debug_assert_eq!(alg, public.alg(), "alg does not match the key type");
        let mut jwk = Jwk {
            kty: String::new(),
            use_: "sig".to_owned(),
            alg: public.alg(),
            kid: kid.as_str().to_owned(),
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
        };
        match public {
            PublicKey::Rsa { n, e } => {
                jwk.kty = "RSA".to_owned();
                jwk.n = Some(b64url(strip_leading_zeros(n)));
                jwk.e = Some(b64url(strip_leading_zeros(e)));
            }
            PublicKey::Ec384 { x, y } => {
                jwk.kty = "EC".to_owned();
                jwk.crv = Some("P-384".to_owned());
                jwk.x = Some(b64url(x));
                jwk.y = Some(b64url(y));
            }
        }
        jwk
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key this JWK carries, the inverse of
    /// [`from_public`](Jwk::from_public): an `RSA` key's `n`, `e`, or a
    /// `P-384` `EC` key's 48-byte `x`, `y`. The reason names what is
    /// missing or malformed.
    pub fn public_key(&self) -> Result<PublicKey, &'static str> {
        let member = |value: &Option<String>, missing: &'static str| {
            let text = value.as_deref().ok_or(missing)?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| "a member is not base64url")
        };
        match self.kty.as_str() {
            "RSA" => Ok(PublicKey::Rsa {
                n: strip_leading_zeros(&member(&self.n, "no n")?).to_vec(),
                e: strip_leading_zeros(&member(&self.e, "no e")?).to_vec(),
            }),
            "EC" if self.crv.as_deref() == Some("P-384") => {
                let coord = |value: &Option<String>, missing| {
                    <[u8; keys::EC_COORD_LEN]>::try_from(member(value, missing)?)
                        .map_err(|_| "a P-384 coordinate is not 48 bytes")
                };
                Ok(PublicKey::Ec384 {
                    x: coord(&self.x, "no x")?,
                    y: coord(&self.y, "no y")?,
                })
            }
            _ => Err("not an RSA or P-384 EC key"),
        }
    }
}

/// RFC 7518 §6.3.1: RSA integers are encoded without leading zero octets.
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// RFC 7638 SHA-256 thumbprint, base64url without padding: the hash of the
/// required members only, in lexicographic order, without whitespace.
pub fn thumbprint(public: &PublicKey) -> String {
    // Every value is base64url or a fixed ASCII name: no JSON escaping needed.
    let canonical = match public {
        PublicKey::Rsa { n, e } => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            b64url(strip_leading_zeros(e)),
            b64url(strip_leading_zeros(n)),
        ),
        PublicKey::Ec384 { x, y } => format!(
            r#"{{"crv":"P-384","kty":"EC","x":"{}","y":"{}"}}"#,
            b64url(x),
            b64url(y),
        ),
    };
    b64url(&Sha256::digest(canonical.as_bytes()))
}

/// The exact bytes served for one key set, and their strong ETag.
#[derive(Clone, Debug)]
pub struct JwksDocument {
    /// `{"keys":[...]}`, compact JSON.
    pub bytes: Bytes,
    /// `"<base64url SHA-256 of bytes>"`, quotes included, ready for the
    /// `ETag` header.
    pub etag: String,
}

/// Encodes a JWKS: `{"keys":[...]}`, compact, keys sorted by kid (plain
/// string order, ties by their encoding) so that every replica serves
/// identical bytes for the same keys, in any input order.
///
/// An empty slice gives `{"keys":[]}`; the HTTP layer answers 503 instead of
/// serving that.
pub fn encode_jwks(keys: &[Jwk]) -> JwksDocument {
    let mut encoded: Vec<(&str, String)> = keys.iter().map(|k| (k.kid(), to_json(k))).collect();
    encoded.sort();
    let mut out = String::from(r#"{"keys":["#);
    for (i, (_, json)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(json);
    }
    out.push_str("]}");
    let etag = format!("\"{}\"", b64url(&Sha256::digest(out.as_bytes())));
    JwksDocument {
        bytes: Bytes::from(out),
        etag,
    }
}

/// The protected header of a client assertion.
///
/// Serialized as `{"alg":..,"kid":..,"typ":"JWT"}` plus `"jku":..` when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtHeader {
    /// Signing algorithm.
    pub alg: Alg,
    /// Kid of the active key that signs.
    pub kid: Kid,
    /// The public JWKS URL, when the client's policy says `jku = true`.
    pub jku: Option<String>,
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    alg: Alg,
    kid: &'a str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    jku: Option<&'a str>,
}

/// The claims of a client assertion (SMART App Launch 2.2, RFC 7523).
/// Times are epoch seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The client_id.
    pub iss: String,
    /// The client_id again.
    pub sub: String,
    /// The token endpoint URL, exactly as the caller gave it.
    pub aud: String,
    /// Issued at, epoch seconds.
    pub iat: i64,
    /// Expiry, epoch seconds.
    pub exp: i64,
    /// Unique id, from [`new_jti`].
    pub jti: String,
}

/// Encodes and signs a JWS in compact form: `header.claims.signature`, each
/// part base64url without padding.
///
/// `sign` receives the signing input (`header.claims` as ASCII bytes) and
/// returns the raw JOSE signature, normally `SigningKey::sign`; its error is
/// passed through unchanged.
pub fn encode_jws<E>(
    header: &JwtHeader,
    claims: &AssertionClaims,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<String, E> {
    let header_json = to_json(&HeaderJson {
        alg: header.alg,
        kid: header.kid.as_str(),
        typ: "JWT",
        jku: header.jku.as_deref(),
    });
    let mut token = b64url(header_json.as_bytes());
    token.push('.');
    token.push_str(&b64url(to_json(claims).as_bytes()));
    let signature = sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64url(&signature));
    Ok(token)
}

/// A fresh `jti`: 16 bytes (128 bits) from the CSPRNG, base64url, 22 chars.
pub fn new_jti() -> Result<String, KeyError> {
    let mut raw = [0u8; 16];
    keys::fill_random(&mut raw)?;
    Ok(b64url(&raw))
}

/// Compact JSON of types that only hold strings, integers and enums with
/// string forms, for which serialization cannot fail.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializing strings and integers cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SetName;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn kid(s: &str) -> Kid {
        Kid::from_stored(s)
    }

    fn decode(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn rfc7638_key() -> PublicKey {
        PublicKey::Rsa {
            n: decode(RFC7638_N),
            e: decode("AQAB"),
        }
    }

    fn ec_key(fill: u8) -> PublicKey {
        PublicKey::Ec384 {
            x: [fill; 48],
            y: [fill.wrapping_add(1); 48],
        }
    }

    #[test]
    fn thumbprint_matches_rfc_7638_section_3_1() {
        assert_eq!(
            thumbprint(&rfc7638_key()),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_ignores_leading_zero_bytes_of_rsa_integers() {
        let PublicKey::Rsa { n, e } = rfc7638_key() else {
            unreachable!()
        };
        let padded = PublicKey::Rsa {
            n: [&[0u8][..], &n].concat(),
            e: [&[0u8, 0][..], &e].concat(),
        };
        assert_eq!(thumbprint(&padded), thumbprint(&rfc7638_key()));
    }

    #[test]
    fn ec_thumbprint_hashes_crv_kty_x_y_in_order() {
        let key = ec_key(7);
        let expected = format!(
            r#"{{"crv":"P-384","kty":"EC","x":"{}","y":"{}"}}"#,
            b64url(&[7; 48]),
            b64url(&[8; 48])
        );
        assert_eq!(
            thumbprint(&key),
            b64url(&Sha256::digest(expected.as_bytes()))
        );
    }

    #[test]
    fn thumbprint_prefix_builds_a_rule_5_kid() {
        let tp = thumbprint(&rfc7638_key());
        let set = SetName::new("default").unwrap();
        assert_eq!(
            Kid::build(&set, Alg::Rs384, 3, &tp).as_str(),
            "default-rs384-v3-NzbLsXh8"
        );
    }

    #[test]
    fn rsa_jwk_has_members_in_order_and_no_private_member() {
        let jwk = Jwk::from_public(&kid("k1"), Alg::Rs384, &rfc7638_key());
        let text = serde_json::to_string(&jwk).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"kty":"RSA","use":"sig","alg":"RS384","kid":"k1","n":"{RFC7638_N}","e":"AQAB"}}"#
            )
        );
        assert_no_private_member(&text);
        assert_eq!(jwk.kid(), "k1");
        assert_eq!(serde_json::from_str::<Jwk>(&text).unwrap(), jwk);
    }

    #[test]
    fn a_jwk_gives_back_the_public_key_it_was_made_from_and_names_what_is_wrong() {
        for key in [rfc7638_key(), ec_key(7)] {
            let jwk = Jwk::from_public(&kid("k1"), key.alg(), &key);
            assert_eq!(jwk.public_key().unwrap(), key);
        }
        let mut rsa = Jwk::from_public(&kid("k1"), Alg::Rs384, &rfc7638_key());
        rsa.e = None;
        assert_eq!(rsa.public_key(), Err("no e"));
        let mut ec = Jwk::from_public(&kid("k1"), Alg::Es384, &ec_key(1));
        ec.x = Some(b64url(&[1; 47]));
        assert_eq!(ec.public_key(), Err("a P-384 coordinate is not 48 bytes"));
        ec.crv = Some("P-256".into());
        assert_eq!(ec.public_key(), Err("not an RSA or P-384 EC key"));
    }

    #[test]
    fn ec_jwk_has_members_in_order_and_no_private_member() {
        let jwk = Jwk::from_public(&kid("k2"), Alg::Es384, &ec_key(1));
        let text = serde_json::to_string(&jwk).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"kty":"EC","use":"sig","alg":"ES384","kid":"k2","crv":"P-384","x":"{}","y":"{}"}}"#,
                b64url(&[1; 48]),
                b64url(&[2; 48])
            )
        );
        assert_no_private_member(&text);
    }

    fn assert_no_private_member(json: &str) {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let object = value.as_object().unwrap();
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            assert!(!object.contains_key(private), "{private:?} in {json}");
            assert!(
                !json.contains(&format!("\"{private}\":")),
                "{private:?} in {json}"
            );
        }
    }

    #[test]
    fn jwks_is_sorted_by_kid_whatever_the_input_order() {
        let a = Jwk::from_public(&kid("set-es384-v1-aaa"), Alg::Es384, &ec_key(1));
        let b = Jwk::from_public(&kid("set-rs384-v1-bbb"), Alg::Rs384, &rfc7638_key());
        let c = Jwk::from_public(&kid("set-es384-v2-ccc"), Alg::Es384, &ec_key(3));
        let one = encode_jwks(&[b.clone(), c.clone(), a.clone()]);
        let two = encode_jwks(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(one.bytes, two.bytes);
        assert_eq!(one.etag, two.etag);

        let parsed: serde_json::Value = serde_json::from_slice(&one.bytes).unwrap();
        let kids: Vec<&str> = parsed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(
            kids,
            ["set-es384-v1-aaa", "set-es384-v2-ccc", "set-rs384-v1-bbb"]
        );
        let text = std::str::from_utf8(&one.bytes).unwrap();
        assert!(text.starts_with(r#"{"keys":[{"kty":"EC""#));
        assert!(!text.contains(' ') && !text.contains('\n'));
    }

    #[test]
    fn jwks_etag_is_the_quoted_hash_of_the_bytes_and_follows_them() {
        let a = Jwk::from_public(&kid("a"), Alg::Es384, &ec_key(1));
        let b = Jwk::from_public(&kid("b"), Alg::Es384, &ec_key(2));
        let doc = encode_jwks(std::slice::from_ref(&a));
        assert_eq!(
            doc.etag,
            format!("\"{}\"", b64url(&Sha256::digest(&doc.bytes)))
        );
        assert_eq!(encode_jwks(std::slice::from_ref(&a)).etag, doc.etag);
        assert_ne!(encode_jwks(&[a.clone(), b]).etag, doc.etag);
        let mut other_key = a.clone();
        other_key.x = Some(b64url(&[9; 48]));
        assert_ne!(encode_jwks(&[other_key]).etag, doc.etag);
        assert_eq!(&encode_jwks(&[]).bytes[..], br#"{"keys":[]}"#);
    }

    #[test]
    fn jws_header_and_claims_are_compact_json_in_fixed_order() {
        let header = JwtHeader {
            alg: Alg::Es384,
            kid: kid("default-es384-v1-abcdefgh"),
            jku: Some("https://keys.example.com/.well-known/jwks.json".into()),
        };
        let claims = AssertionClaims {
            iss: "app".into(),
            sub: "app".into(),
            aud: "https://ehr.example.com/token".into(),
            iat: 1_700_000_000,
            exp: 1_700_000_300,
            jti: "j".into(),
        };
        let mut seen_input = Vec::new();
        let token = encode_jws(&header, &claims, |input| {
            seen_input = input.to_vec();
            Ok::<_, ()>(vec![1, 2, 3])
        })
        .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(seen_input, format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(
            String::from_utf8(decode(parts[0])).unwrap(),
            r#"{"alg":"ES384","kid":"default-es384-v1-abcdefgh","typ":"JWT","jku":"https://keys.example.com/.well-known/jwks.json"}"#
        );
        assert_eq!(
            String::from_utf8(decode(parts[1])).unwrap(),
            r#"{"iss":"app","sub":"app","aud":"https://ehr.example.com/token","iat":1700000000,"exp":1700000300,"jti":"j"}"#
        );
        assert_eq!(decode(parts[2]), [1, 2, 3]);
        assert!(!token.contains('='));
    }

    #[test]
    fn jws_header_omits_jku_when_unset_and_passes_sign_errors_through() {
        let header = JwtHeader {
            alg: Alg::Rs384,
            kid: kid("k"),
            jku: None,
        };
        let claims = AssertionClaims {
            iss: "a".into(),
            sub: "a".into(),
            aud: "u".into(),
            iat: 0,
            exp: 1,
            jti: "j".into(),
        };
        let token = encode_jws(&header, &claims, |_| Ok::<_, ()>(vec![0])).unwrap();
        let head = token.split('.').next().unwrap();
        assert_eq!(
            String::from_utf8(decode(head)).unwrap(),
            r#"{"alg":"RS384","kid":"k","typ":"JWT"}"#
        );
        let err = encode_jws(&header, &claims, |_| Err::<Vec<u8>, _>("no key"));
        assert_eq!(err, Err("no key"));
    }

    #[test]
    fn jtis_are_128_bit_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let jti = new_jti().unwrap();
            assert!(jti.len() >= 22, "{jti}");
            assert_eq!(decode(&jti).len(), 16);
            assert!(seen.insert(jti));
        }
    }
}
