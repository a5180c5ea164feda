//! `jwksd backend check`: does this token do what jwksd needs?
//!
//! Owns: listing the mechanisms jwksd needs against the slot's, and for
//! each algorithm a round trip with a throwaway session key (generate,
//! sign, read the public half back, verify with aws-lc-rs), reported one
//! line per check.
//! Does not own: login (a login failure is the `Err` of `check`, there is
//! nothing else to report) or the command's exit code (the caller uses
//! [`CheckReport::passed`]).

use std::fmt;

use cryptoki::mechanism::MechanismType;

use super::connection::OpError;
use super::connection::Pkcs11Token;
use super::error::Pkcs11Error;
use super::error::{breaks_connection, code_of};
use super::generate::{generate_pair, temp_label};
use super::objects::read_public;
use super::sign::sign_with;
use crate::keys::aws_lc;
use crate::types::Alg;

/// The result of [`Pkcs11Token::check`]. `Display` renders one line per
/// check: `ok      <name>: <detail>` or `FAILED  <name>: <detail>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Backend name from the config.
    pub backend: String,
    /// Each check, in the order made.
    pub checks: Vec<Check>,
}

/// One line of a [`CheckReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`CKM_ECDSA`, `ES384 sign and verify`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Details: key sizes offered, the `CKR_*` code of a failure.
    pub detail: String,
}

impl CheckReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.checks.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let verdict = if c.ok { "ok" } else { "FAILED" };
            write!(f, "{verdict:<7} {}: {}", c.name, c.detail)?;
        }
        Ok(())
    }
}

/// The mechanisms jwksd uses, by spec name.
const NEEDED: [(&str, MechanismType); 4] = [
    (
        "CKM_RSA_PKCS_KEY_PAIR_GEN",
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
    ),
    ("CKM_SHA384_RSA_PKCS", MechanismType::SHA384_RSA_PKCS),
    ("CKM_EC_KEY_PAIR_GEN", MechanismType::ECC_KEY_PAIR_GEN),
    ("CKM_ECDSA", MechanismType::ECDSA),
];

impl Pkcs11Token {
    /// Logs in, lists which needed mechanisms the slot has, and for each
    /// algorithm generates a session key (`CKA_TOKEN` = false, gone when
    /// its session closes), signs with it and verifies the signature with
    /// aws-lc-rs against the public half read back. RSA keys are
    /// `rsa_bits` long.
    ///
    /// Errors: only when the token cannot be used at all (module, slot,
    /// login, a dropped connection); a missing mechanism or a failed round
    /// trip is a failed line of the report.
    pub fn check(&self, rsa_bits: u32) -> Result<CheckReport, Pkcs11Error> {
        let checks = self.run(
            || "checking the token".to_owned(),
            |conn| {
                let mut checks = Vec::new();
                let offered = conn.pkcs11().get_mechanism_list(conn.slot)?;
                for (name, mechanism) in NEEDED {
                    let (ok, detail) = if offered.contains(&mechanism) {
                        let sizes = conn
                            .pkcs11()
                            .get_mechanism_info(conn.slot, mechanism)
                            .map(|i| {
                                format!("key sizes {}..{}", i.min_key_size(), i.max_key_size())
                            })
                            .unwrap_or_else(|e| format!("no mechanism info: {}", code_of(&e)));
                        (true, format!("offered ({sizes})"))
                    } else {
                        (false, "not offered by this slot".to_owned())
                    };
                    checks.push(Check {
                        name: name.to_owned(),
                        ok,
                        detail,
                    });
                }
                for alg in Alg::ALL {
                    let name = match alg {
                        Alg::Rs384 => format!("RS384 sign and verify (RSA-{rsa_bits} session key)"),
                        Alg::Es384 => "ES384 sign and verify (P-384 session key)".to_owned(),
                    };
                    let (ok, detail) = match self.round_trip(conn, alg, rsa_bits) {
                        Ok(()) => (true, "signature verified by aws-lc-rs".to_owned()),
                        Err(OpError::Ck(e)) if breaks_connection(&e) => return Err(OpError::Ck(e)),
                        Err(OpError::Ck(e)) => (false, code_of(&e)),
                        Err(OpError::Done(e)) => (false, e.to_string()),
                        Err(OpError::Busy { sessions }) => {
                            (false, format!("all {sessions} sessions busy"))
                        }
                    };
                    checks.push(Check { name, ok, detail });
                }
                Ok(checks)
            },
        )?;
        Ok(CheckReport {
            backend: self.name().to_owned(),
            checks,
        })
    }

    /// Generate a session key, sign, read the public half, verify.
    fn round_trip(
        &self,
        conn: &super::connection::Connection,
        alg: Alg,
        rsa_bits: u32,
    ) -> Result<(), OpError> {
        let unexpected = |what: String| {
            OpError::Done(Pkcs11Error::Unexpected {
                backend: self.name().to_owned(),
                what,
            })
        };
        let label = temp_label()
            .map_err(unexpected)?
            .replace("-new-", "-check-");
        // Session objects live until this session closes at the end of the
        // function, whatever happens in between.
        let session = conn.rw_session()?;
        let (public_h, private_h) =
            generate_pair(&session, alg, rsa_bits, label.as_bytes(), false)?;
        let message = b"jwksd backend check";
        let signature = sign_with(&session, private_h, alg, message, self.name())?;
        let public = read_public(&session, public_h, self.name())?;
        if !aws_lc::verify(&public, message, &signature) {
            return Err(unexpected(
                "the token's signature does not verify against its public key".to_owned(),
            ));
        }
        Ok(())
    }
}
