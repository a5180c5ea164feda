//! The PKCS#11 token driver: private halves generated and kept inside a
//! token (an HSM, or SoftHSM in tests), used to sign without ever leaving
//! it (DESIGN.md §5).
//!
//! Owns: one [`Pkcs11Token`] per configured backend, with its lazy,
//! retried connection (`connection`, `module`, `pool`), key generation
//! labelled by kid (`generate`), JOSE signing (`sign`), finding, listing and
//! destroying jwksd's objects (`objects`) and `jwksd backend check`
//! (`check`). Errors are [`Pkcs11Error`], one line naming the backend and the
//! `CKR_*` code.
//! Does not own: the config (`[backends.NAME]` is parsed and the PIN read
//! before a [`Pkcs11Settings`] is built), which key signs, or the store's
//! reference to a key (backend name and CKA_ID = kid).
//!
//! Every call blocks the calling thread on the token: callers run them on a
//! blocking thread. A `Pkcs11Token` is `Send + Sync`; calls from many
//! threads share a pool of sessions.

mod check;
mod connection;
mod error;
mod generate;
mod module;
mod objects;
mod pool;
mod sign;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

pub use check::{Check, CheckReport};
pub use error::Pkcs11Error;

use crate::keys::secret::SecretBytes;
use connection::{Connection, Status};

/// What a `[backends.NAME] kind = "pkcs11"` table resolves to.
///
/// `Debug` never shows the PIN.
pub struct Pkcs11Settings {
    /// Backend name from the config, for messages ("hsm").
    pub name: String,
    /// The vendor's PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Which token of the module.
    pub token: TokenSelector,
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

/// How the token is found among the module's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The slot whose token has this label (`token_label`): survives slot
    /// renumbering, the usual choice.
    Label(String),
    /// This slot id (`slot`).
    Slot(u64),
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

/// One configured PKCS#11 backend: a token in a vendor module.
///
/// Built without touching the token; the first call (or [`connect`]) loads
/// the module, finds the slot and logs in. When the token answers that the
/// session, login or device is bad, the connection is dropped and the next
/// call makes a new one (after a failed attempt, at most one attempt a
/// second). Private key handles are cached per kid for the life of a
/// connection.
///
/// [`connect`]: Pkcs11Token::connect
pub struct Pkcs11Token {
    settings: Pkcs11Settings,
    /// The live connection, if any. Calls clone the `Arc` and work without
    /// holding the lock.
    current: RwLock<Option<Arc<Connection>>>,
    /// Health and reconnect timing; also serializes connection attempts.
    status: Mutex<Status>,
    /// A PIN the token refused as incorrect, never sent again (tokens lock
    /// themselves after a few wrong PINs).
    refused_pin: Mutex<Option<SecretBytes>>,
}

impl Pkcs11Token {
    /// A token for `settings`. Does not connect (never fails, never panics):
    /// connection is lazy and retried.
    pub fn new(settings: Pkcs11Settings) -> Self {
        Pkcs11Token {
            settings,
            current: RwLock::new(None),
            status: Mutex::new(Status::new()),
            refused_pin: Mutex::new(None),
        }
    }

    /// The backend name from the config.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Connects and logs in now if not connected (idempotent). Used at
    /// start and by the daemon's health loop every few seconds.
    ///
    /// Errors: the reason the token is unusable (module, slot, login,
    /// device), or [`Pkcs11Error::Down`] within a second of a failed attempt.
    pub fn connect(&self) -> Result<(), Pkcs11Error> {
        self.connection().map(|_| ())
    }

    /// Up, or Down with a one-line reason and since when.
    pub fn health(&self) -> Health {
        connection::health(self)
    }
}

impl fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Token")
            .field("name", &self.settings.name)
            .field("module", &self.settings.module)
            .field("token", &self.settings.token)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
