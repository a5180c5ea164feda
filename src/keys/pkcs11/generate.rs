//! Generating key pairs inside the token and labelling them with their kid.
//!
//! Owns: the key templates (private: token, private, sensitive, not
//! extractable, sign-only; public: verify), the temporary label a key
//! carries until its kid is known, the rename to the kid, and destroying
//! both halves when anything fails after generation.
//! Does not own: computing the kid (the caller's `kid_for`, from the public
//! half) or finding orphans a crash left (`objects::list_objects`).

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

use super::connection::OpError;
use super::connection::Pkcs11Token;
use super::error::Pkcs11Error;
use super::objects::{SECP384R1_PARAMS, TEMP_LABEL_PREFIX, read_public};
use crate::keys::public::{PublicKey, RSA_BITS};
use crate::types::{Alg, Kid};

/// RSA public exponent 65537, big-endian.
const F4: [u8; 3] = [0x01, 0x00, 0x01];

impl Pkcs11Token {
    /// Generates a key pair for `alg` inside the token and returns its kid
    /// and public half. Blocking: RSA-4096 in a token can take many seconds.
    ///
    /// The pair is first labelled `jwksd-new-<16 hex>` (label and `CKA_ID`);
    /// once its public half is read, `kid_for` names it and both objects get
    /// `CKA_LABEL` = `CKA_ID` = kid. If anything fails after generation both
    /// objects are destroyed (best effort: a crash leaves a `jwksd-new-`
    /// orphan, found by [`list_objects`](Pkcs11Token::list_objects)).
    /// `rsa_bits` (one of [`RSA_BITS`]) is ignored for ES384.
    pub fn generate(
        &self,
        alg: Alg,
        rsa_bits: u32,
        kid_for: &dyn Fn(&PublicKey) -> Kid,
    ) -> Result<(Kid, PublicKey), Pkcs11Error> {
        if alg == Alg::Rs384 && !RSA_BITS.contains(&rsa_bits) {
            return Err(Pkcs11Error::UnsupportedRsaBits {
                backend: self.name().to_owned(),
                bits: rsa_bits,
            });
        }
        let temp = temp_label().map_err(|what| Pkcs11Error::Unexpected {
            backend: self.name().to_owned(),
            what,
        })?;
        self.run(
            || format!("generating an {alg} key"),
            |conn| {
                let session = conn.rw_session()?;
                let (public_h, private_h) =
                    generate_pair(&session, alg, rsa_bits, temp.as_bytes(), true)?;
                let named = name_pair(&session, public_h, private_h, self.name(), kid_for);
                if named.is_err() {
                    // Best effort: the error being returned matters more.
                    let _ = session.destroy_object(private_h);
                    let _ = session.destroy_object(public_h);
                }
                named
            },
        )
    }
}

/// Reads the public half, asks `kid_for` for the kid, and sets `CKA_LABEL`
/// and `CKA_ID` of both objects to it.
fn name_pair(
    session: &Session,
    public_h: ObjectHandle,
    private_h: ObjectHandle,
    backend: &str,
    kid_for: &dyn Fn(&PublicKey) -> Kid,
) -> Result<(Kid, PublicKey), OpError> {
    let public = read_public(session, public_h, backend)?;
    let kid = kid_for(&public);
    let name = [
        Attribute::Label(kid.as_str().into()),
        Attribute::Id(kid.as_str().into()),
    ];
    session.update_attributes(public_h, &name)?;
    session.update_attributes(private_h, &name)?;
    Ok((kid, public))
}

/// Generates a pair labelled `label` (also its `CKA_ID`); `token` = false
/// makes session objects (the check's throwaway keys). Returns (public,
/// private) handles.
pub(super) fn generate_pair(
    session: &Session,
    alg: Alg,
    rsa_bits: u32,
    label: &[u8],
    token: bool,
) -> Result<(ObjectHandle, ObjectHandle), OpError> {
    // Signing only: a token's defaults (SoftHSM's, for one) also let a
    // private key decrypt and unwrap, and a public key encrypt and wrap.
    let mut public = vec![
        Attribute::Token(token),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Label(label.to_vec()),
        Attribute::Id(label.to_vec()),
    ];
    let mut private = vec![
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.to_vec()),
        Attribute::Id(label.to_vec()),
    ];
    if alg == Alg::Es384 {
        private.push(Attribute::Derive(false));
    }
    let mechanism = match alg {
        Alg::Rs384 => {
            public.push(Attribute::ModulusBits(u64::from(rsa_bits).into()));
            public.push(Attribute::PublicExponent(F4.to_vec()));
            Mechanism::RsaPkcsKeyPairGen
        }
        Alg::Es384 => {
            public.push(Attribute::EcParams(SECP384R1_PARAMS.to_vec()));
            Mechanism::EccKeyPairGen
        }
    };
    Ok(session.generate_key_pair(&mechanism, &public, &private)?)
}

/// `jwksd-new-<16 hex>` from the system CSPRNG: unique enough that two
/// generations (or a leftover) never share a label.
pub(super) fn temp_label() -> Result<String, String> {
    let mut random = [0u8; 8];
    crate::keys::signing::fill_random(&mut random).map_err(|e| e.to_string())?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TEMP_LABEL_PREFIX}{hex}"))
}
