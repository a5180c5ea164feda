//! A token ([`Pkcs11Token`]) and its connection: the module lease, the
//! slot, the logged-in anchor session and the signing pool; and the rules
//! for making, dropping and remaking it. The operations (`generate`,
//! `sign`, `objects`, `check`) are `impl Pkcs11Token` blocks of their own.
//!
//! Owns: finding the slot (by token label or slot id), logging in (PIN from
//! the settings or re-read from `pin_file`), never resending a PIN the token
//! refused as incorrect, the one-attempt-per-second limit on reconnects after
//! a failed attempt, and turning a cryptoki error into a [`Pkcs11Error`],
//! dropping the connection when the error says it is bad.
//! Does not own: what the operations do (`generate`, `sign`, `objects`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;

use super::error::{Pkcs11Error, breaks_connection, code_of};
use super::module::{self, Lease, lock};
use super::pool::{Checkout, Pool};
use super::settings::{Health, Pkcs11Settings, TokenChoice};
use crate::keys::secret::SecretBytes;
use crate::types::Kid;

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
    /// Health and reconnect timing; also serializes connection attempts,
    /// so it is held while a connection is made (seconds, for a network
    /// HSM out of reach).
    status: Mutex<Status>,
    /// A copy of `status.health`, updated with it and never held during a
    /// token call: `/readyz` and the health loop read it on the async
    /// runtime, which must not wait for a connection attempt.
    seen: Mutex<Health>,
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
            seen: Mutex::new(Status::new().health),
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
        health(self)
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

/// After a failed connection attempt, calls fail fast (with the reason) for
/// this long instead of hammering a dead token or its network.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A live, logged-in connection to the token.
///
/// Fields drop in declaration order: the pool's and the anchor's sessions
/// are closed before the lease, whose last drop calls `C_Finalize`.
pub(super) struct Connection {
    /// Private key object handles by kid. Handles are only valid within one
    /// login of one application, so the cache lives and dies with the
    /// connection.
    keys: Mutex<HashMap<Kid, ObjectHandle>>,
    /// Read-only sessions for signing and reading.
    pub(super) pool: Pool,
    /// Holds the login: PKCS#11 login state belongs to the application and
    /// lasts while it has at least one session open; this one stays open so
    /// the pool may open and close sessions freely. Only ever used to log in
    /// (a Mutex because `Session` is not `Sync`).
    _anchor: Mutex<Session>,
    /// The slot holding the token.
    pub(super) slot: Slot,
    lease: Lease,
}

impl Connection {
    /// A fresh read-write session, for operations that create or destroy
    /// objects. Short-lived: session objects made in it (the check's keys)
    /// vanish when it closes.
    pub(super) fn rw_session(&self) -> Result<Session, CkError> {
        self.lease.pkcs11().open_rw_session(self.slot)
    }

    /// Runs `f` with a session of the signing pool.
    pub(super) fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        match self.pool.with(self.lease.pkcs11(), self.slot, f) {
            Ok(out) => out,
            Err(Checkout::Open(e)) => Err(OpError::Ck(e)),
            Err(Checkout::Busy) => Err(OpError::Busy {
                sessions: self.pool.max(),
            }),
        }
    }

    /// The initialized library, for slot-level queries.
    pub(super) fn pkcs11(&self) -> &cryptoki::context::Pkcs11 {
        self.lease.pkcs11()
    }

    /// The cached private key handle for `kid`, if any.
    pub(super) fn cached_key(&self, kid: &Kid) -> Option<ObjectHandle> {
        lock(&self.keys).get(kid).copied()
    }

    /// Remembers (`Some`) or forgets (`None`) the private key handle of `kid`.
    pub(super) fn cache_key(&self, kid: &Kid, handle: Option<ObjectHandle>) {
        let mut keys = lock(&self.keys);
        match handle {
            Some(h) => {
                keys.insert(kid.clone(), h);
            }
            None => {
                keys.remove(kid);
            }
        }
    }
}

/// Why an operation inside a connection failed, before it is turned into a
/// [`Pkcs11Error`] naming the backend and the operation.
pub(super) enum OpError {
    /// The token (or cryptoki) refused.
    Ck(CkError),
    /// The pool stayed busy.
    Busy { sessions: usize },
    /// Already a complete error (key not found, unexpected answer).
    Done(Pkcs11Error),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        OpError::Ck(e)
    }
}

/// Health and reconnect bookkeeping of a token.
pub(super) struct Status {
    pub(super) health: Health,
    /// When the last connection attempt failed, for [`RETRY_EVERY`].
    last_failure: Option<Instant>,
}

impl Status {
    /// Not connected yet: nothing has been tried.
    pub(super) fn new() -> Self {
        Status {
            health: Health::Down {
                reason: "not connected yet".to_owned(),
                since: SystemTime::now(),
            },
            last_failure: None,
        }
    }

    /// Marks the token down, keeping the time it first went down.
    fn down(&mut self, reason: String) {
        let since = match &self.health {
            Health::Down { since, .. } => *since,
            Health::Up => SystemTime::now(),
        };
        self.health = Health::Down { reason, since };
    }
}

impl Pkcs11Token {
    /// The live connection, connecting first if there is none (at most one
    /// attempt per [`RETRY_EVERY`] after a failed one; calls in between get
    /// [`Pkcs11Error::Down`] with the reason).
    pub(super) fn connection(&self) -> Result<Arc<Connection>, Pkcs11Error> {
        if let Some(conn) = self.current_connection() {
            return Ok(conn);
        }
        // One thread connects; the others wait here and then find it done.
        let mut status = lock(&self.status);
        if let Some(conn) = self.current_connection() {
            return Ok(conn);
        }
        if let (Some(at), Health::Down { reason, since }) = (status.last_failure, &status.health)
            && at.elapsed() < RETRY_EVERY
        {
            return Err(Pkcs11Error::Down {
                backend: self.settings.name.clone(),
                reason: reason.clone(),
                since: *since,
            });
        }
        match self.open_connection() {
            Ok(conn) => {
                let conn = Arc::new(conn);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&conn));
                if let Health::Down { reason, .. } = &status.health {
                    tracing::info!(backend = %self.settings.name, after = %reason, "PKCS#11 token connected and logged in");
                }
                status.health = Health::Up;
                status.last_failure = None;
                *lock(&self.seen) = Health::Up;
                Ok(conn)
            }
            Err(e) => {
                tracing::warn!(backend = %self.settings.name, error = %e, "PKCS#11 token unavailable");
                status.down(e.to_string());
                status.last_failure = Some(Instant::now());
                *lock(&self.seen) = status.health.clone();
                Err(e)
            }
        }
    }

    /// Drops the live connection and marks the token down with `reason`:
    /// for a caller that found the token at odds with the store (the
    /// private object of a key that may sign is missing, as when a
    /// token's storage is gone). The next call, or the daemon's health
    /// loop, connects again from scratch.
    pub fn mark_down(&self, reason: String) {
        if let Some(conn) = self.current_connection() {
            self.drop_connection(&conn, reason);
            // Counted as a failed attempt: reconnects come at most once per
            // RETRY_EVERY, not on every request that finds the key missing.
            lock(&self.status).last_failure = Some(Instant::now());
        }
    }

    fn current_connection(&self) -> Option<Arc<Connection>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops `conn` if it is still the current connection, and marks the
    /// token down with `reason`. Its sessions close (and the library is
    /// finalized if no other connection uses it) once the last call still
    /// holding it returns.
    pub(super) fn drop_connection(&self, conn: &Arc<Connection>, reason: String) {
        let old = {
            let mut status = lock(&self.status);
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                return;
            }
            tracing::warn!(backend = %self.settings.name, %reason, "PKCS#11 connection dropped; the next call reconnects");
            status.down(reason);
            *lock(&self.seen) = status.health.clone();
            current.take()
        };
        // Closing sessions talks to the token: outside the locks.
        drop(old);
    }

    /// Runs `f` on the live connection; a failure becomes a `Pkcs11Error`
    /// naming `operation`, and one that says the connection is bad drops it.
    pub(super) fn run<T>(
        &self,
        operation: impl FnOnce() -> String,
        f: impl FnOnce(&Connection) -> Result<T, OpError>,
    ) -> Result<T, Pkcs11Error> {
        let conn = self.connection()?;
        match f(&conn) {
            Ok(out) => Ok(out),
            Err(OpError::Done(e)) => Err(e),
            Err(OpError::Busy { sessions }) => Err(Pkcs11Error::Busy {
                backend: self.settings.name.clone(),
                sessions,
                waited_secs: super::pool::WAIT_FOR_SESSION.as_secs(),
            }),
            Err(OpError::Ck(e)) => {
                let reconnecting = breaks_connection(&e);
                let err = Pkcs11Error::Token {
                    backend: self.settings.name.clone(),
                    operation: operation(),
                    code: code_of(&e),
                    reconnecting,
                };
                if reconnecting {
                    self.drop_connection(&conn, err.to_string());
                }
                Err(err)
            }
        }
    }

    /// Loads and initializes the module, finds the slot, logs in.
    fn open_connection(&self) -> Result<Connection, Pkcs11Error> {
        let s = &self.settings;
        let lease = module::acquire(&s.name, &s.module)?;
        let slot = self.find_slot(&lease)?;
        let token_error = |e: CkError| Pkcs11Error::Token {
            backend: s.name.clone(),
            operation: "opening a session".to_owned(),
            code: code_of(&e),
            reconnecting: true,
        };
        let anchor = lease.pkcs11().open_ro_session(slot).map_err(token_error)?;
        self.login(&anchor)?;
        Ok(Connection {
            keys: Mutex::new(HashMap::new()),
            pool: Pool::new(s.sessions),
            _anchor: Mutex::new(anchor),
            slot,
            lease,
        })
    }

    fn find_slot(&self, lease: &Lease) -> Result<Slot, Pkcs11Error> {
        let s = &self.settings;
        let list_error = |e: CkError| Pkcs11Error::Token {
            backend: s.name.clone(),
            operation: "listing slots".to_owned(),
            code: code_of(&e),
            reconnecting: true,
        };
        let slots = lease.pkcs11().get_slots_with_token().map_err(list_error)?;
        match &s.token {
            TokenChoice::Slot(id) => {
                slots
                    .into_iter()
                    .find(|slot| slot.id() == *id)
                    .ok_or_else(|| Pkcs11Error::SlotNotFound {
                        backend: s.name.clone(),
                        slot: *id,
                        module: s.module.clone(),
                    })
            }
            TokenChoice::Label(label) => {
                for slot in slots {
                    // A slot whose token cannot be read is not ours to fail on.
                    if let Ok(info) = lease.pkcs11().get_token_info(slot)
                        && info.label().trim_end() == label.as_str()
                    {
                        return Ok(slot);
                    }
                }
                Err(Pkcs11Error::TokenNotFound {
                    backend: s.name.clone(),
                    label: label.clone(),
                    module: s.module.clone(),
                })
            }
        }
    }

    /// Logs the application in as the user, unless the PIN is the one the
    /// token last refused as incorrect.
    fn login(&self, anchor: &Session) -> Result<(), Pkcs11Error> {
        let name = &self.settings.name;
        let login_error = |code: String, not_retried: bool| Pkcs11Error::Login {
            backend: name.clone(),
            code,
            not_retried,
        };
        let read;
        let pin = match &self.settings.pin_file {
            Some(path) => {
                read = crate::keys::owner_file::read_pin_file(path).map_err(|e| {
                    Pkcs11Error::PinFile {
                        backend: name.clone(),
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                &read
            }
            None => &self.settings.pin,
        };
        let mut refused = lock(&self.refused_pin);
        if refused.as_ref().is_some_and(|r| r.expose() == pin.expose()) {
            return Err(login_error("CKR_PIN_INCORRECT".to_owned(), true));
        }
        // cryptoki's own secret box: zeroized on drop.
        let raw = RawAuthPin::new(Box::new(pin.expose().to_vec()));
        match anchor.login_with_raw(UserType::User, &raw) {
            // Already logged in by another connection of this process to the
            // same token (login state is per application and token).
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                *refused = None;
                Ok(())
            }
            Err(e @ CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                *refused = Some(SecretBytes::copy_from(pin.expose()));
                Err(login_error(code_of(&e), false))
            }
            Err(e) => Err(login_error(code_of(&e), false)),
        }
    }
}

/// The token's health as last seen.
pub(super) fn health(token: &Pkcs11Token) -> Health {
    lock(&token.seen).clone()
}

#[cfg(test)]
impl Pkcs11Token {
    /// Test hook: runs `f` with a fresh read-write session of the live
    /// connection (connecting first), for raw cryptoki calls.
    pub(super) fn test_rw_session<T>(
        &self,
        f: impl FnOnce(&Session) -> T,
    ) -> Result<T, Pkcs11Error> {
        let conn = self.connection()?;
        let session = conn.rw_session().map_err(|e| Pkcs11Error::Token {
            backend: self.settings.name.clone(),
            operation: "opening a test session".to_owned(),
            code: code_of(&e),
            reconnecting: false,
        })?;
        Ok(f(&session))
    }

    /// Test hook: the library context of the live connection, to break it
    /// (`finalize`) behind the driver's back.
    pub(super) fn test_pkcs11(&self) -> cryptoki::context::Pkcs11 {
        match self.current_connection() {
            Some(conn) => conn.pkcs11().clone(),
            None => panic!("test_pkcs11 needs a live connection"),
        }
    }
}
