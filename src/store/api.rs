//! The store's interface: [`Store`], what every implementation offers, and
//! [`StoreError`], why it could not answer.

use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::chain::{Anchor, AuditEntry, AuditRecord};
use crate::audit::key::AuditKey;
use crate::lifecycle::model::{Applied, Change, StoredKey};
use crate::types::Kid;

/// The name of the one lease row used for lifecycle leadership.
pub const LIFECYCLE_LEASE: &str = "lifecycle";

/// Why the store could not answer. Database text stays in `Backend` and is
/// never shown to socket or HTTP callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("store: {0}")]
    Backend(String),
    /// The migrations could not be applied.
    #[error("store migration failed: {0}")]
    Migrate(String),
    /// No key has this kid.
    #[error("no key with kid {0}")]
    UnknownKid(String),
    /// A row could not be read back into a domain value.
    #[error("store holds an unreadable row: {0}")]
    Corrupt(String),
    /// A re-seal found the store changed under it (a running daemon?).
    #[error("re-seal refused: {0}")]
    ResealConflict(String),
    /// The store was sealed under another master key.
    #[error(
        "the store was sealed with another master key (fingerprint {stored}, this key {given}): start with the master key that sealed it"
    )]
    WrongMasterKey { stored: String, given: String },
}

/// What `seal rotate-master` changes in the audit chain, in the re-seal's
/// transaction: the switch record `entry` is appended MAC'd under both
/// chain keys (`audit::switch_after`); `wrap` (the old chain key wrapped
/// under the new one, `AuditKey::wrap`) is kept so the new master key still
/// verifies the records before it; an anchor the old key authenticates (or
/// an unkeyed one) is authenticated under the new key.
pub struct ChainSwitch<'a> {
    pub old: &'a AuditKey,
    pub new: &'a AuditKey,
    pub wrap: String,
    pub entry: AuditEntry,
}

/// Storage for keys, store facts and the audit trail.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every key of every set, ordered by (set, alg, version).
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// What the lifecycle planner needs, ordered by (set, alg, version):
    /// every pending, active and retiring key, plus the highest-version key
    /// of each (set, alg) whatever its state (the next version counts up from
    /// it, and it tells a set that lost every key from a new one). Retired
    /// and revoked keys pile up forever (one per rotation); the tick runs
    /// every few seconds, so it reads this instead of [`keys`](Store::keys)
    /// and its work follows the live keys, not the history. Served by the
    /// partial index `keys_live` plus the `(set_name, alg, version)` index.
    async fn live_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// A counter bumped by every committed key change: replicas poll it to
    /// learn that the keys changed.
    async fn revision(&self) -> Result<i64, StoreError>;
    /// Applies one change in one transaction (see [`Change`]).
    async fn apply(&self, change: &Change) -> Result<Applied, StoreError>;
    /// Records the master key fingerprint on first use; afterwards refuses a
    /// different one, so a wrong key is caught at start, not at first unseal.
    async fn bind_master_key(&self, fingerprint: &str) -> Result<(), StoreError>;
    /// Appends entries to the audit chain in one transaction, in order,
    /// each MAC'd under `key` (`audit::chain_after`).
    async fn append_audit(
        &self,
        key: &Arc<AuditKey>,
        entries: &[AuditEntry],
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// The latest `limit` audit records, oldest first.
    async fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Every audit record, oldest first.
    async fn audit_all(&self) -> Result<Vec<AuditRecord>, StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Replaces sealed private halves in one transaction: each
    /// `(kid, old, new)` is written only if the row still holds `old`, and
    /// the master key fingerprint moves from `old_fp` to `new_fp`. Any
    /// mismatch changes nothing and is an error. In the same transaction
    /// the audit chain passes to the new master key's chain key
    /// ([`ChainSwitch`]).
    async fn reseal(
        &self,
        old_fp: &str,
        new_fp: &str,
        blobs: &[(Kid, Vec<u8>, Vec<u8>)],
        switch: &ChainSwitch<'_>,
    ) -> Result<AuditRecord, StoreError>;
    /// Deletes the audit records older than `before` (unix seconds), oldest
    /// first and never the newest record, and keeps the (seq, hash) of the
    /// last deleted one, MAC'd under `key`, as the anchor the chain now
    /// starts from. Returns how many were deleted.
    async fn prune_audit(&self, key: &AuditKey, before: i64) -> Result<u64, StoreError>;
    /// What the first stored audit record chains to: `None` until a
    /// pruning, meaning the genesis hash before record 1.
    async fn audit_anchor(&self) -> Result<Option<Anchor>, StoreError>;
    /// Authenticates, under `key`, an anchor written before the chain was
    /// keyed (trust on first use, like the unkeyed records the first keyed
    /// record binds); returns its seq if there was one to authenticate.
    async fn key_legacy_anchor(&self, key: &AuditKey) -> Result<Option<i64>, StoreError>;
    /// The chain keys left by `seal rotate-master`, each wrapped under the
    /// key that replaced it: (older id, newer id, wrap).
    async fn audit_key_wraps(&self) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Takes or renews the lifecycle lease for `holder` if it is free,
    /// expired, or already held by `holder`; `true` when `holder` now holds
    /// it for `ttl_secs` seconds from now. `false` means another replica
    /// holds an unexpired lease (and, for a former holder, that it lost it).
    ///
    /// The expiry uses the DATABASE clock (PostgreSQL `now()`, SQLite
    /// `julianday('now')`), not the replica's, with millisecond resolution.
    async fn acquire_lease(&self, holder: &str, ttl_secs: u32) -> Result<bool, StoreError>;
    /// Gives the lease up (clean shutdown) so another replica takes over at
    /// once. Does nothing if `holder` does not hold it.
    async fn release_lease(&self, holder: &str) -> Result<(), StoreError>;
    /// A handle that is notified when another writer may have changed the
    /// keys. PostgreSQL: `LISTEN jwksd_keys` on a dedicated connection that
    /// reconnects on its own (and notifies after a reconnect, since changes
    /// may have been missed meanwhile); SQLite: notified after this
    /// process's own commits. Always the same `Notify`; it is signalled with
    /// `notify_one`, so a change that lands while the (single) consumer is
    /// busy is kept as a permit, not lost. Notifications may be spurious or,
    /// on a broken connection, late: callers still poll
    /// [`revision`](Store::revision) as the fallback.
    fn changes(&self) -> Arc<tokio::sync::Notify>;
}
