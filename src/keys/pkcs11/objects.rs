//! Finding, reading, listing and destroying jwksd's key objects on the
//! token, by `CKA_ID` (= kid) or by the shape of `CKA_LABEL`.
//!
//! Owns: the templates that find a kid's objects, reading a public key
//! object into a [`PublicKey`] (both `CKA_EC_POINT` encodings), what a
//! jwksd label looks like, and the public `public_key`, `destroy`,
//! `list_objects` and `private_attributes` calls.
//! Does not own: generation (`generate`) or signing (`sign`).

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};

use super::connection::OpError;
use super::connection::Pkcs11Token;
use super::error::Pkcs11Error;
use super::settings::{PrivateAttributes, TokenObject};
use crate::keys::public::{EC_COORD_LEN, PublicKey};
use crate::types::Kid;

/// Label prefix of a key whose generation has not finished (renamed to its
/// kid once the public half is read).
pub(super) const TEMP_LABEL_PREFIX: &str = "jwksd-new-";

/// DER of the secp384r1 OID (1.3.132.0.34), the `CKA_EC_PARAMS` of P-384.
pub(super) const SECP384R1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

impl Pkcs11Token {
    /// The public half of the key with `CKA_ID` = kid, read from its public
    /// key object. Errors: [`Pkcs11Error::KeyNotFound`], a token error, or
    /// [`Pkcs11Error::Unexpected`] for a key that is not RSA or P-384.
    pub fn public_key(&self, kid: &Kid) -> Result<PublicKey, Pkcs11Error> {
        self.run(
            || format!("reading the public key {kid}"),
            |conn| {
                conn.with_session(|session| {
                    let handle = find_one(session, ObjectClass::PUBLIC_KEY, kid)?
                        .ok_or_else(|| not_found(session, kid))?;
                    read_public(session, handle, self.name())
                })
            },
        )
    }

    /// `C_DestroyObject` on the private and public objects with `CKA_ID` =
    /// kid. Returns how many were destroyed: 0 if none (idempotent).
    pub fn destroy(&self, kid: &Kid) -> Result<usize, Pkcs11Error> {
        // An empty CKA_ID would match every object that has none, other
        // applications' included: jwksd never makes one.
        if kid.as_str().is_empty() {
            return Ok(0);
        }
        self.run(
            || format!("destroying {kid}"),
            |conn| {
                conn.cache_key(kid, None);
                let session = conn.rw_session()?;
                ensure_logged_in(&session)?;
                let handles = session.find_objects(&[Attribute::Id(kid.as_str().into())])?;
                let mut destroyed = 0;
                for handle in handles {
                    session.destroy_object(handle)?;
                    destroyed += 1;
                }
                Ok(destroyed)
            },
        )
    }

    /// Every key object (private or public) whose `CKA_LABEL` looks like
    /// jwksd's: `jwksd-new-...` (an unfinished generation) or a kid
    /// (`<set>-<rs384|es384>-v<N>-<8 base64url chars>`). For orphan cleanup:
    /// the caller destroys those the store does not know. Objects of other
    /// applications are not listed.
    pub fn list_objects(&self) -> Result<Vec<TokenObject>, Pkcs11Error> {
        self.run(
            || "listing key objects".to_owned(),
            |conn| {
                conn.with_session(|session| {
                    ensure_logged_in(session)?;
                    let mut found = Vec::new();
                    for (class, private) in [
                        (ObjectClass::PRIVATE_KEY, true),
                        (ObjectClass::PUBLIC_KEY, false),
                    ] {
                        for handle in session.find_objects(&[Attribute::Class(class)])? {
                            let attrs = session.get_attributes(
                                handle,
                                &[AttributeType::Label, AttributeType::Id],
                            )?;
                            let label = bytes_of(&attrs, AttributeType::Label)
                                .map(|b| String::from_utf8_lossy(b).into_owned());
                            let Some(label) = label.filter(|l| is_jwksd_label(l)) else {
                                continue;
                            };
                            let id = bytes_of(&attrs, AttributeType::Id)
                                .map(<[u8]>::to_vec)
                                .unwrap_or_default();
                            found.push(TokenObject { label, id, private });
                        }
                    }
                    Ok(found)
                })
            },
        )
    }

    /// Protection attributes of the private key object of `kid`, for tests
    /// and `jwksd backend check`.
    pub fn private_attributes(&self, kid: &Kid) -> Result<PrivateAttributes, Pkcs11Error> {
        self.run(
            || format!("reading the attributes of {kid}"),
            |conn| {
                conn.with_session(|session| {
                    let handle = find_one(session, ObjectClass::PRIVATE_KEY, kid)?
                        .ok_or_else(|| not_found(session, kid))?;
                    let attrs = session.get_attributes(
                        handle,
                        &[
                            AttributeType::Sensitive,
                            AttributeType::Extractable,
                            AttributeType::AlwaysSensitive,
                            AttributeType::NeverExtractable,
                            AttributeType::Token,
                        ],
                    )?;
                    let flag = |wanted: AttributeType| {
                        attrs.iter().any(|a| {
                            matches!(
                                (a, wanted),
                                (Attribute::Sensitive(true), AttributeType::Sensitive)
                                    | (Attribute::Extractable(true), AttributeType::Extractable)
                                    | (
                                        Attribute::AlwaysSensitive(true),
                                        AttributeType::AlwaysSensitive
                                    )
                                    | (
                                        Attribute::NeverExtractable(true),
                                        AttributeType::NeverExtractable
                                    )
                                    | (Attribute::Token(true), AttributeType::Token)
                            )
                        })
                    };
                    Ok(PrivateAttributes {
                        sensitive: flag(AttributeType::Sensitive),
                        // Unreadable counts as extractable: the safe reading.
                        extractable: flag(AttributeType::Extractable)
                            || !attrs.iter().any(|a| matches!(a, Attribute::Extractable(_))),
                        always_sensitive: flag(AttributeType::AlwaysSensitive),
                        never_extractable: flag(AttributeType::NeverExtractable),
                        token: flag(AttributeType::Token),
                    })
                })
            },
        )
    }
}

/// The key not found, as an operation error, once `session` is known to be
/// logged in (see [`ensure_logged_in`]).
pub(super) fn not_found(session: &Session, kid: &Kid) -> OpError {
    match ensure_logged_in(session) {
        Ok(()) => OpError::Done(Pkcs11Error::KeyNotFound { kid: kid.clone() }),
        Err(e) => e,
    }
}

/// Fails with `CKR_USER_NOT_LOGGED_IN` (which drops the connection) unless
/// `session` has the user's login. A token that lost its login (a reset, a
/// `C_Logout`) hides private objects and drops their handles: "not found",
/// "0 destroyed" or a list without private keys would then be answers about
/// the keys when the token is the problem.
pub(super) fn ensure_logged_in(session: &Session) -> Result<(), OpError> {
    let info = session.get_session_info()?;
    if matches!(
        info.session_state(),
        SessionState::RoUser | SessionState::RwUser
    ) {
        Ok(())
    } else {
        Err(OpError::Ck(CkError::Pkcs11(
            RvError::UserNotLoggedIn,
            Function::FindObjects,
        )))
    }
}

/// The one object of `class` with `CKA_ID` = kid (the first if the token
/// holds several, which jwksd never makes).
pub(super) fn find_one(
    session: &Session,
    class: ObjectClass,
    kid: &Kid,
) -> Result<Option<ObjectHandle>, OpError> {
    let found =
        session.find_objects(&[Attribute::Class(class), Attribute::Id(kid.as_str().into())])?;
    Ok(found.into_iter().next())
}

/// Reads a public key object into a [`PublicKey`]: RSA from `CKA_MODULUS`
/// and `CKA_PUBLIC_EXPONENT`, P-384 from `CKA_EC_POINT`.
pub(super) fn read_public(
    session: &Session,
    handle: ObjectHandle,
    backend: &str,
) -> Result<PublicKey, OpError> {
    let unexpected = |what: String| {
        OpError::Done(Pkcs11Error::Unexpected {
            backend: backend.to_owned(),
            what,
        })
    };
    let key_type = session
        .get_attributes(handle, &[AttributeType::KeyType])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| unexpected("public key object without CKA_KEY_TYPE".to_owned()))?;
    if key_type == KeyType::RSA {
        let attrs = session.get_attributes(
            handle,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let n = bytes_of(&attrs, AttributeType::Modulus).map(strip_leading_zeros);
        let e = bytes_of(&attrs, AttributeType::PublicExponent).map(strip_leading_zeros);
        match (n, e) {
            (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => Ok(PublicKey::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            }),
            _ => Err(unexpected(
                "RSA public key without CKA_MODULUS or CKA_PUBLIC_EXPONENT".to_owned(),
            )),
        }
    } else if key_type == KeyType::EC {
        let attrs =
            session.get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])?;
        if bytes_of(&attrs, AttributeType::EcParams) != Some(&SECP384R1_PARAMS[..]) {
            return Err(unexpected(
                "EC public key is not on P-384 (CKA_EC_PARAMS)".to_owned(),
            ));
        }
        let point = bytes_of(&attrs, AttributeType::EcPoint)
            .ok_or_else(|| unexpected("EC public key without CKA_EC_POINT".to_owned()))?;
        ec_point_xy(point).ok_or_else(|| {
            unexpected(format!(
                "CKA_EC_POINT of {} bytes is not an uncompressed P-384 point",
                point.len()
            ))
        })
    } else {
        Err(unexpected(format!(
            "public key of unsupported type {key_type}"
        )))
    }
}

/// `x` and `y` of an uncompressed P-384 point, given either bare
/// (`04 || x || y`, 97 bytes: what PKCS#11 v3 and some tokens return) or
/// wrapped in a DER OCTET STRING (`04 61 04 || x || y`, or with the long
/// length form `04 81 61`: what PKCS#11 v2.40 specifies and SoftHSM
/// returns). The lengths differ, so the two are never confused.
pub(super) fn ec_point_xy(point: &[u8]) -> Option<PublicKey> {
    const RAW: usize = 1 + 2 * EC_COORD_LEN;
    let raw = match point {
        [0x04, 0x61, rest @ ..] if rest.len() == RAW => rest,
        [0x04, 0x81, 0x61, rest @ ..] if rest.len() == RAW => rest,
        all if all.len() == RAW => all,
        _ => return None,
    };
    let (tag, xy) = raw.split_first()?;
    if *tag != 0x04 {
        return None;
    }
    let (x, y) = xy.split_at(EC_COORD_LEN);
    Some(PublicKey::Ec384 {
        x: x.try_into().ok()?,
        y: y.try_into().ok()?,
    })
}

/// The bytes of the first attribute of type `wanted` in `attrs`.
fn bytes_of(attrs: &[Attribute], wanted: AttributeType) -> Option<&[u8]> {
    attrs.iter().find_map(|a| match (a, wanted) {
        (Attribute::Label(b), AttributeType::Label)
        | (Attribute::Id(b), AttributeType::Id)
        | (Attribute::Modulus(b), AttributeType::Modulus)
        | (Attribute::PublicExponent(b), AttributeType::PublicExponent)
        | (Attribute::EcParams(b), AttributeType::EcParams)
        | (Attribute::EcPoint(b), AttributeType::EcPoint) => Some(b.as_slice()),
        _ => None,
    })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Whether `label` is one jwksd gives its objects: a temporary
/// `jwksd-new-...` label or a kid.
pub(super) fn is_jwksd_label(label: &str) -> bool {
    label.starts_with(TEMP_LABEL_PREFIX) || looks_like_kid(label)
}

/// `<set>-<rs384|es384>-v<N>-<8 base64url chars>`, with the set name rule
/// of `SetName`. Only the thumbprint part may hold a `-` (base64url), so the
/// label is split at its first three.
pub(super) fn looks_like_kid(label: &str) -> bool {
    let parts: Vec<&str> = label.splitn(4, '-').collect();
    let [set, alg, version, short] = parts.as_slice() else {
        return false;
    };
    crate::types::SetName::new(set).is_ok()
        && matches!(*alg, "rs384" | "es384")
        && version
            .strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && short.len() == 8
        && short
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
