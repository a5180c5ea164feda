//! `jwksd seal rotate-master`: re-seals every private key under a new master
//! key. Run with the daemon stopped (a running daemon holds the old key in
//! memory and would seal its next key with it).
//!
//! Order of work, so that a crash at any point loses nothing:
//! 1. the new key is written to `<master_key_file>.new` (0600, fsynced);
//! 2. every private half is opened with the old key and sealed with the new
//!    one in memory, then all are replaced, and the store's master key
//!    fingerprint changed, in ONE transaction;
//! 3. the new file is renamed over the old one.
//!
//! Step 2 also appends the audit record of the switch and passes the audit
//! chain to the new master key's chain key (`Store::reseal`).
//!
//! A crash before 2 commits leaves the store on the old key (the `.new` file
//! is simply replaced next time); after 2 but before 3, the store is on the
//! new key and the next run of this command finishes the rename.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::audit::key::AuditKey;
use crate::clock::Clock as _;
use crate::config::Config;
use crate::keys::seal::{MasterKey, write_new_master_key_file};
use crate::store::api::ChainSwitch;

/// What the rotation did.
#[derive(Debug)]
pub struct ResealReport {
    pub resealed: usize,
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    /// True when only the rename of an interrupted rotation was left.
    pub completed_interrupted: bool,
}

fn new_path(current: &Path) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

fn install(new: &Path, current: &Path) -> anyhow::Result<()> {
    std::fs::rename(new, current)
        .with_context(|| format!("cannot rename {} to {}", new.display(), current.display()))?;
    if let Some(dir) = current.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable only once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

/// Rotates the master key of `config`'s store; `socket` is checked to make
/// sure no daemon is running.
pub async fn rotate_master(config: &Config, socket: &Path) -> anyhow::Result<ResealReport> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "a daemon is listening on {}: stop it first (it holds the old master key in memory)",
            socket.display()
        );
    }
    let Some(current) = config.master_key_file.as_deref() else {
        bail!(
            "[seal] master_key_file is not set: rotate-master replaces that file (a key given in JWKSD_MASTER_KEY must be rotated by the secret's owner)"
        );
    };
    let old = MasterKey::load_file(current)
        .with_context(|| format!("cannot load the current master key {}", current.display()))?;
    let store = crate::store::open(&config.store)
        .await
        .with_context(|| format!("cannot open the store {}", config.store))?;
    let pending_new = new_path(current);
    if pending_new.exists() {
        let new = MasterKey::load_file(&pending_new)?;
        if store.bind_master_key(&new.fingerprint()).await.is_ok() {
            // Step 2 committed last time; only the rename was missing.
            install(&pending_new, current)?;
            return Ok(ResealReport {
                resealed: 0,
                old_fingerprint: old.fingerprint(),
                new_fingerprint: new.fingerprint(),
                completed_interrupted: true,
            });
        }
        // Never used: start over with a fresh key.
        std::fs::remove_file(&pending_new)
            .with_context(|| format!("cannot remove {}", pending_new.display()))?;
    }
    store
        .bind_master_key(&old.fingerprint())
        .await
        .context("the current master key file does not match the store")?;
    write_new_master_key_file(&pending_new)
        .with_context(|| format!("cannot write {}", pending_new.display()))?;
    let new = MasterKey::load_file(&pending_new)?;
    let mut blobs = Vec::new();
    for key in store.keys().await? {
        let Some(sealed) = key.sealed_private else {
            continue;
        };
        let pkcs8 = old
            .open(&key.kid, &sealed)
            .with_context(|| format!("cannot open {} with the current master key", key.kid))?;
        let resealed = new.seal(&key.kid, &pkcs8)?;
        blobs.push((key.kid, sealed, resealed));
    }
    // The switch is itself the chain's record of the rotation, committed
    // with it: MAC'd under both chain keys, with the old chain key wrapped
    // under the new one so the new master key alone verifies the chain.
    let (old_chain, new_chain) = (AuditKey::derive(&old), AuditKey::derive(&new));
    let mut entry = crate::audit::entry(crate::clock::SystemClock.now(), "rotate-master", "ok");
    entry.uid = Some(nix::unistd::getuid().as_raw());
    entry.gid = Some(nix::unistd::getgid().as_raw());
    entry.pid = Some(std::process::id() as i32);
    entry.detail = Some(format!(
        "{} private keys re-sealed; master key {} -> {}; audit chain key {} -> {}",
        blobs.len(),
        old.fingerprint(),
        new.fingerprint(),
        old_chain.id(),
        new_chain.id()
    ));
    let switch = ChainSwitch {
        wrap: new_chain
            .wrap(&old_chain)
            .context("cannot wrap the audit chain key")?,
        old: &old_chain,
        new: &new_chain,
        entry,
    };
    store
        .reseal(&old.fingerprint(), &new.fingerprint(), &blobs, &switch)
        .await
        .context("re-sealing failed; nothing was changed")?;
    install(&pending_new, current)?;
    Ok(ResealReport {
        resealed: blobs.len(),
        old_fingerprint: old.fingerprint(),
        new_fingerprint: new.fingerprint(),
        completed_interrupted: false,
    })
}
