//! JOSE signatures made by the token.
//!
//! Owns: the mechanism per algorithm, hashing ES384 messages outside the
//! token, checking the signature shape, and the per-connection cache of
//! private key handles (looked up once per kid, forgotten if the token says
//! the handle is no longer valid).
//! Does not own: JWS encoding (`jose`) or which key signs (`lifecycle`).

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::{Digest, Sha384};

use super::connection::Pkcs11Token;
use super::connection::{Connection, OpError};
use super::error::Pkcs11Error;
use super::objects::{find_one, not_found};
use crate::keys::public::ES384_SIGNATURE_LEN;
use crate::types::{Alg, Kid};

impl Pkcs11Token {
    /// JOSE signature bytes over `message` with the private key of `kid`:
    /// RS384 is `CKM_SHA384_RSA_PKCS` (modulus length); ES384 is SHA-384
    /// computed here, then `CKM_ECDSA` (SoftHSM 2.6 has no
    /// `CKM_ECDSA_SHA384`), giving `r || s`, 96 bytes.
    ///
    /// Runs on the caller's (blocking) thread with a session from the pool.
    /// Errors: [`Pkcs11Error::KeyNotFound`], a token error (with
    /// "reconnecting" when the connection was dropped), or `Busy`/`Down`.
    pub fn sign(&self, kid: &Kid, alg: Alg, message: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        self.run(
            || format!("signing with {kid}"),
            |conn| {
                conn.with_session(|session| {
                    let handle = private_handle(conn, session, kid)?;
                    match sign_with(session, handle, alg, message, self.name()) {
                        // Destroyed and remade behind our back (another
                        // jwksd, an operator): look the kid up once more.
                        Err(OpError::Ck(CkError::Pkcs11(
                            RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                            _,
                        ))) => {
                            conn.cache_key(kid, None);
                            let handle = private_handle(conn, session, kid)?;
                            sign_with(session, handle, alg, message, self.name())
                        }
                        other => other,
                    }
                })
            },
        )
    }
}

/// The private key handle of `kid`, from the cache or the token.
fn private_handle(
    conn: &Connection,
    session: &Session,
    kid: &Kid,
) -> Result<ObjectHandle, OpError> {
    if let Some(handle) = conn.cached_key(kid) {
        return Ok(handle);
    }
    let handle =
        find_one(session, ObjectClass::PRIVATE_KEY, kid)?.ok_or_else(|| not_found(session, kid))?;
    conn.cache_key(kid, Some(handle));
    Ok(handle)
}

/// Signs `message` with the private key `handle` as `alg` requires.
pub(super) fn sign_with(
    session: &Session,
    handle: ObjectHandle,
    alg: Alg,
    message: &[u8],
    backend: &str,
) -> Result<Vec<u8>, OpError> {
    let signature = match alg {
        Alg::Rs384 => session.sign(&Mechanism::Sha384RsaPkcs, handle, message)?,
        Alg::Es384 => {
            let digest = Sha384::digest(message);
            session.sign(&Mechanism::Ecdsa, handle, digest.as_slice())?
        }
    };
    let shape_ok = match alg {
        Alg::Rs384 => signature.len() >= 256,
        Alg::Es384 => signature.len() == ES384_SIGNATURE_LEN,
    };
    if !shape_ok {
        return Err(OpError::Done(Pkcs11Error::Unexpected {
            backend: backend.to_owned(),
            what: format!(
                "the token returned a {alg} signature of {} bytes",
                signature.len()
            ),
        }));
    }
    Ok(signature)
}
