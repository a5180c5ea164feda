//! One loaded and initialized PKCS#11 module per path, shared by every
//! token of the process.
//!
//! Owns: loading a vendor `.so` (once, for the life of the process),
//! `C_Initialize` when the first connection needs it and `C_Finalize` when
//! the last one is dropped.
//! Does not own: slots, sessions or login (`connection`).
//!
//! Why a registry: `C_Initialize` is per process and per library, so a
//! second `Pkcs11Token` on the same module (another backend name, another
//! token of the same HSM) would get `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and
//! one token's `C_Finalize` would pull the library from under the other.
//! Here each connection holds a [`Lease`]; the library is initialized while
//! at least one lease lives. A token that reconnects while it is the only
//! user really finalizes and re-initializes the library (a fresh start for a
//! wedged module); with other users it only reopens its sessions and logs in
//! again.
//!
//! Why the library is never unloaded: `dlclose` of a vendor module is not
//! safe in practice (atexit handlers, threads the module started), and
//! cryptoki's context does not finalize on drop anyway; so a loaded module
//! stays in the registry and only `C_Initialize`/`C_Finalize` cycle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use super::error::{Pkcs11Error, code_of};

/// Every module loaded by this process, by the path as configured.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Arc<Module>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A loaded module and how many connections use it.
struct Module {
    path: PathBuf,
    pkcs11: Pkcs11,
    state: Mutex<InitState>,
}

#[derive(Default)]
struct InitState {
    /// Live leases.
    users: usize,
    /// We called `C_Initialize` (and so must call `C_Finalize`); false when
    /// someone else in the process had initialized the library first.
    owned: bool,
}

/// A connection's share of an initialized module. Dropping the last lease
/// finalizes the library.
pub(super) struct Lease {
    module: Arc<Module>,
}

impl Lease {
    /// The initialized context, to open sessions with.
    pub(super) fn pkcs11(&self) -> &Pkcs11 {
        &self.module.pkcs11
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = lock(&self.module.state);
        state.users = state.users.saturating_sub(1);
        if state.users == 0 && state.owned {
            state.owned = false;
            // The sessions of the connection holding this lease are already
            // closed (a connection drops its sessions before its lease). An
            // error here has nobody to go to: the next `C_Initialize` says
            // whether the library is usable.
            if let Err(e) = self.module.pkcs11.clone().finalize() {
                tracing::warn!(module = %self.module.path.display(), error = %code_of(&e), "C_Finalize failed");
            }
        }
    }
}

/// Loads `path` (first use only) and makes sure it is initialized.
pub(super) fn acquire(backend: &str, path: &Path) -> Result<Lease, Pkcs11Error> {
    let module = {
        let mut modules = lock(&MODULES);
        match modules.get(path) {
            Some(m) => Arc::clone(m),
            None => {
                let pkcs11 = Pkcs11::new(path).map_err(|e| Pkcs11Error::Load {
                    backend: backend.to_owned(),
                    module: path.to_owned(),
                    reason: e.to_string(),
                })?;
                let m = Arc::new(Module {
                    path: path.to_owned(),
                    pkcs11,
                    state: Mutex::new(InitState::default()),
                });
                modules.insert(path.to_owned(), Arc::clone(&m));
                m
            }
        }
    };
    let mut state = lock(&module.state);
    if state.users == 0 {
        // OS locking: sessions of one token are used from many threads.
        let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
        match module.pkcs11.initialize(args) {
            Ok(()) => state.owned = true,
            // Initialized by someone else in this process (another library
            // linking the same module): usable, but not ours to finalize.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => state.owned = false,
            Err(e) => {
                return Err(Pkcs11Error::Initialize {
                    backend: backend.to_owned(),
                    module: path.to_owned(),
                    code: code_of(&e),
                });
            }
        }
    }
    state.users += 1;
    drop(state);
    Ok(Lease { module })
}

/// Locks `m`, taking the data of a poisoned lock as it is: every critical
/// section of this driver leaves its data consistent at each step (counters,
/// maps and vectors updated by single operations), so a panic elsewhere
/// while holding the lock does not make the data wrong.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
