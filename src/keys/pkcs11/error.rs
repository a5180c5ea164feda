//! Why a PKCS#11 operation failed, as one line an operator can act on: the
//! backend's name, what was being done, and the PKCS#11 return code by its
//! spec name (`CKR_PIN_INCORRECT`), never the crate's prose for it.
//!
//! Owns: the error type, the `CKR_*` names, and the one decision of which
//! return codes mean "the connection (session, login, device) is bad", after
//! which the token drops its connection and logs in again.
//! Does not own: the reconnect itself (`connection`). No message and no
//! `Debug` ever holds the PIN: no variant has a field that could carry it.

use std::path::PathBuf;
use std::time::SystemTime;

use cryptoki::error::{Error as CkError, RvError};

use crate::types::Kid;

/// Why a call on a [`Pkcs11Token`](super::Pkcs11Token) failed.
///
/// [`is_unavailable`](Pkcs11Error::is_unavailable) tells a caller whether
/// the token itself is the problem (answer 503, the token is retried) or the
/// request is (the key is not there, the token answered nonsense).
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The vendor module could not be loaded (missing file, not a PKCS#11
    /// library, missing symbol).
    #[error("backend {backend:?}: cannot load PKCS#11 module {}: {reason}", module.display())]
    Load {
        /// Backend name from the config.
        backend: String,
        /// Path of the vendor `.so`.
        module: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// `C_Initialize` refused.
    #[error("backend {backend:?}: C_Initialize of {} failed: {code}", module.display())]
    Initialize {
        /// Backend name from the config.
        backend: String,
        /// Path of the vendor `.so`.
        module: PathBuf,
        /// The `CKR_*` name.
        code: String,
    },
    /// No slot holds a token with the configured label.
    #[error("backend {backend:?}: token {label:?} not found in any slot of {}", module.display())]
    TokenNotFound {
        /// Backend name from the config.
        backend: String,
        /// The configured token label.
        label: String,
        /// Path of the vendor `.so`.
        module: PathBuf,
    },
    /// The configured slot does not exist or holds no token.
    #[error("backend {backend:?}: no token in slot {slot} of {}", module.display())]
    SlotNotFound {
        /// Backend name from the config.
        backend: String,
        /// The configured slot id.
        slot: u64,
        /// Path of the vendor `.so`.
        module: PathBuf,
    },
    /// The PIN file could not be read again before a (re)login.
    #[error("backend {backend:?}: cannot read pin_file {}: {reason}", path.display())]
    PinFile {
        /// Backend name from the config.
        backend: String,
        /// The configured `pin_file`.
        path: PathBuf,
        /// The I/O error (never the file's content).
        reason: String,
    },
    /// `C_Login` refused (wrong PIN, PIN locked or expired, ...). A PIN the
    /// token refused as incorrect is not tried again (a token locks itself
    /// after a few wrong PINs): only a changed PIN (`pin_file`) is.
    #[error("backend {backend:?}: login refused: {code}{}", if *not_retried { " (the same PIN is not tried again; fix pin_file)" } else { "" })]
    Login {
        /// Backend name from the config.
        backend: String,
        /// The `CKR_*` name.
        code: String,
        /// The PIN was not sent: it is the one already refused.
        not_retried: bool,
    },
    /// A token operation failed. `reconnecting` is set when the return code
    /// says the session, login or device is bad: the connection was dropped
    /// and the next call logs in again.
    #[error("backend {backend:?}: {operation} failed: {code}{}", if *reconnecting { "; reconnecting" } else { "" })]
    Token {
        /// Backend name from the config.
        backend: String,
        /// What was being done ("signing", "generating an RS384 key", ...).
        operation: String,
        /// The `CKR_*` name (or the wrapper's reason if the call never
        /// reached the token).
        code: String,
        /// The connection was dropped because of this error.
        reconnecting: bool,
    },
    /// The token is down and the last connection attempt was less than a
    /// second ago: this call failed fast without touching the token.
    #[error("{reason} (down since {})", rfc3339(*since))]
    Down {
        /// Backend name from the config.
        backend: String,
        /// The one-line reason of the failure that took the token down.
        reason: String,
        /// When the token went down.
        since: SystemTime,
    },
    /// Every session of the signing pool stayed busy for too long.
    #[error("backend {backend:?}: all {sessions} signing sessions busy for {waited_secs}s")]
    Busy {
        /// Backend name from the config.
        backend: String,
        /// Size of the pool.
        sessions: usize,
        /// How long the call waited.
        waited_secs: u64,
    },
    /// No key object with `CKA_ID` = kid is on the token.
    #[error("no key with CKA_ID {kid} in the token")]
    KeyNotFound {
        /// The kid looked up.
        kid: Kid,
    },
    /// An RSA size the driver does not generate (see
    /// [`RSA_BITS`](crate::keys::RSA_BITS)).
    #[error("backend {backend:?}: rsa_bits = {bits}: must be one of 2048, 3072, 4096, 8192")]
    UnsupportedRsaBits {
        /// Backend name from the config.
        backend: String,
        /// The refused size.
        bits: u32,
    },
    /// The token answered something the driver cannot use (a public key of
    /// the wrong type or curve, a signature of the wrong length).
    #[error("backend {backend:?}: {what}")]
    Unexpected {
        /// Backend name from the config.
        backend: String,
        /// What was wrong.
        what: String,
    },
}

impl Pkcs11Error {
    /// True when the token (module, slot, login, session, device) is the
    /// problem rather than the request: the caller answers 503 and the token
    /// is retried (by the next call or the health loop's `connect()`).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Pkcs11Error::Load { .. }
            | Pkcs11Error::Initialize { .. }
            | Pkcs11Error::TokenNotFound { .. }
            | Pkcs11Error::SlotNotFound { .. }
            | Pkcs11Error::PinFile { .. }
            | Pkcs11Error::Login { .. }
            | Pkcs11Error::Down { .. }
            | Pkcs11Error::Busy { .. } => true,
            Pkcs11Error::Token { reconnecting, .. } => *reconnecting,
            Pkcs11Error::KeyNotFound { .. }
            | Pkcs11Error::UnsupportedRsaBits { .. }
            | Pkcs11Error::Unexpected { .. } => false,
        }
    }
}

/// `since` as RFC 3339 UTC, seconds precision, for the `Down` message.
fn rfc3339(since: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(since).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The spec name of a cryptoki error: `CKR_PIN_INCORRECT` for a token
/// answer, the wrapper's own reason for anything that never reached the
/// token (a missing function, an integer that does not fit).
pub(super) fn code_of(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, _) => ckr_name(*rv),
        other => other.to_string(),
    }
}

/// `RvError::PinIncorrect` -> `CKR_PIN_INCORRECT`.
///
/// Hand-written because cryptoki's `Display` for a return code is a
/// paragraph of the spec, and it has no way back to the `CK_RV` name. The
/// variant names are the spec names in CamelCase (checked in the tests for
/// the codes this driver names), so the conversion is mechanical.
pub(super) fn ckr_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("CKR_VENDOR_DEFINED+{code:#x}"),
        RvError::UnknownErrorCode(code) => format!("unknown PKCS#11 return code {code:#x}"),
        other => {
            let camel = format!("{other:?}");
            let mut name = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// True when `error` says the connection is bad (session gone, logged out,
/// device removed or broken, library finalized): the token drops its
/// connection and logs in again on the next call.
///
/// `CKR_GENERAL_ERROR` and `CKR_FUNCTION_FAILED` are included: the spec
/// allows the token to be in an unknown state after them, and a reconnect
/// is cheap next to signing with a wedged session.
pub(super) fn breaks_connection(error: &CkError) -> bool {
    matches!(
        error,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError
                | RvError::FunctionFailed,
            _
        )
    )
}
