//! The signing session pool of one connection.
//!
//! Owns: opening read-only sessions on demand up to the configured size,
//! lending one per call, and making callers wait (bounded) when all are
//! busy. A PKCS#11 session runs one operation at a time and cryptoki's
//! `Session` is `Send` but not `Sync`, so concurrency comes from several
//! sessions, each used by one thread at a time.
//! Does not own: login (the connection's anchor session holds it for all
//! sessions of the application) or deciding that the connection is bad.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::module::lock;

/// How long a call waits for a free session before giving up with `Busy`.
/// Signing takes milliseconds; waiting this long means the token is stuck.
pub(super) const WAIT_FOR_SESSION: Duration = Duration::from_secs(10);

pub(super) struct Pool {
    state: Mutex<State>,
    freed: Condvar,
    max: usize,
}

struct State {
    idle: Vec<Session>,
    /// Sessions open: idle plus lent out.
    open: usize,
}

/// Why no session could be lent.
pub(super) enum Checkout {
    /// Opening a new session failed.
    Open(CkError),
    /// All `max` sessions stayed busy for [`WAIT_FOR_SESSION`].
    Busy,
}

impl Pool {
    /// An empty pool of at most `max` sessions (at least one).
    pub(super) fn new(max: usize) -> Self {
        Pool {
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    /// Size of the pool.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// Runs `f` with a session of the pool: an idle one, a newly opened one
    /// if fewer than `max` are open, or the first one given back within
    /// [`WAIT_FOR_SESSION`]. The session goes back to the pool afterwards
    /// (a closure rather than a guard object, so no `Option` to unwrap).
    pub(super) fn with<T>(
        &self,
        pkcs11: &Pkcs11,
        slot: Slot,
        f: impl FnOnce(&Session) -> T,
    ) -> Result<T, Checkout> {
        let session = self.take(pkcs11, slot)?;
        let out = f(&session);
        lock(&self.state).idle.push(session);
        self.freed.notify_one();
        Ok(out)
    }

    fn take(&self, pkcs11: &Pkcs11, slot: Slot) -> Result<Session, Checkout> {
        let deadline = Instant::now() + WAIT_FOR_SESSION;
        let mut state = lock(&self.state);
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(session);
            }
            if state.open < self.max {
                state.open += 1;
                // Opening talks to the token: not under the lock.
                drop(state);
                return pkcs11.open_ro_session(slot).map_err(|e| {
                    lock(&self.state).open -= 1;
                    self.freed.notify_one();
                    Checkout::Open(e)
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Checkout::Busy);
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }
}
