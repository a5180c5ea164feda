//! The plain values of the driver: what a `[backends.NAME]` table resolves
//! to, the token's health, and what it reports about its objects.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

pub use crate::config::backends::TokenChoice;
use crate::keys::secret::SecretBytes;

/// What a `[backends.NAME] kind = "pkcs11"` table resolves to.
///
/// `Debug` never shows the PIN.
pub struct Pkcs11Settings {
    /// Backend name from the config, for messages ("hsm").
    pub name: String,
    /// The vendor's PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Which token of the module.
    pub token: TokenChoice,
    /// The user PIN, already read by the config (`pin_file` or
    /// `JWKSD_PKCS11_PIN`).
    pub pin: SecretBytes,
    /// If set, the PIN is read again from this file at each (re)login (one
    /// trailing newline dropped), so an operator can fix a changed PIN
    /// without a restart; `pin` is then unused.
    pub pin_file: Option<PathBuf>,
    /// Size of the signing session pool (at least 1; see
    /// [`Pkcs11Settings::default_sessions`]).
    pub sessions: usize,
}

impl Pkcs11Settings {
    /// The default pool size: the number of CPUs (1 if unknown), as many
    /// concurrent signatures as the daemon can ask for.
    pub fn default_sessions() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

impl fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("name", &self.name)
            .field("module", &self.module)
            .field("token", &self.token)
            .field("pin", &"(redacted)")
            .field("pin_file", &self.pin_file)
            .field("sessions", &self.sessions)
            .finish()
    }
}

/// Whether the token is usable, for `/readyz` and 503 messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Connected and logged in.
    Up,
    /// Not connected: why (one line, naming the backend and the `CKR_*`
    /// code) and since when (wall clock, for operators).
    Down {
        /// The last failure.
        reason: String,
        /// When the token went down (first failure of this outage).
        since: SystemTime,
    },
}

/// A key object of jwksd's on the token (see [`Pkcs11Token::list_objects`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenObject {
    /// `CKA_LABEL`: a kid, or `jwksd-new-<hex>` for a key whose generation
    /// did not finish.
    pub label: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// A private key object (else a public key object).
    pub private: bool,
}

/// Protection attributes of a private key object, as the token reports
/// them (see [`Pkcs11Token::private_attributes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateAttributes {
    /// `CKA_SENSITIVE`: the value cannot be read.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key can be wrapped out.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: sensitive since it was made.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: never was extractable.
    pub never_extractable: bool,
    /// `CKA_TOKEN`: stored in the token (not a session object).
    pub token: bool,
}
