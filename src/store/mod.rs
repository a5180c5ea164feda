//! The key store: one trait, [`Store`], and one implementation of it
//! written once over sqlx for both databases, chosen once from
//! `store.url`. Row types stay in the store; callers see domain types only.
//!
//! - `sql.rs`: the [`Store`] over any dialect: reads, the audit chain,
//!   re-seal, pruning, the lease;
//! - `transitions.rs`: the key changes' rules;
//! - `rows.rs`: how keys and audit records map to rows;
//! - `dialect.rs`: the few statements the databases spell differently;
//! - `sqlite.rs`, `postgres.rs`: each database's dialect, how it is opened
//!   and what it needs around the shared rules (SQLite's WAL truncation,
//!   PostgreSQL's listener);
//! - `sqlite_audit.rs`: SQLite's audit appender thread.
//!
//! Every change is one [`Change`] applied in one transaction that re-checks
//! its preconditions, so several replicas (or a stale plan) can race safely:
//! the loser gets [`Applied::Stale`] and nothing changes.
//!
//! # The lifecycle lease
//!
//! Several replicas may share one PostgreSQL database (DESIGN §4); all of
//! them serve and sign, but only the holder of the lease runs lifecycle
//! transitions. The lease is a row `lease(name, holder, expires_at_ms)`
//! taken or renewed by one atomic upsert
//! `... WHERE holder = $me OR expires_at_ms < <database now>`, rather than a
//! session-level advisory lock, because:
//!
//! - its expiry is bounded and explicit: a holder that is killed, frozen or
//!   cut off loses the lease `ttl` after its last renewal, whatever the
//!   server believes about its TCP session (a session lock survives until
//!   the server notices the dead connection, which with default keepalives
//!   can take hours, and a frozen-but-connected process keeps it forever);
//! - the holder can tell that it lost it: a renewal that returns `false`
//!   means another replica took over, whereas a session lock silently
//!   vanishes with a reconnect of the pool connection that held it;
//! - it needs no connection pinned for the life of the process, and works
//!   the same on SQLite.
//!
//! Expiry is computed with the DATABASE clock on both sides of the
//! comparison, so replica clock skew cannot make two replicas both believe
//! they hold it. The lease is an efficiency and clarity measure, not the
//! safety net: every [`Change`] still re-checks its precondition inside its
//! transaction, so a replica that lost the lease mid-tick gets `Stale`.

mod dialect;
mod postgres;
mod rows;
mod sql;
mod sqlite;
mod sqlite_audit;
mod transitions;

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::audit::{AuditEntry, AuditRecord};
use crate::config::StoreUrl;
use crate::lifecycle::model::{Applied, Change, StoredKey};
use crate::types::Kid;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

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
    /// Appends entries to the audit chain in one transaction, in order.
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>, StoreError>;
    /// The latest `limit` audit records, oldest first.
    async fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Every audit record, oldest first.
    async fn audit_all(&self) -> Result<Vec<AuditRecord>, StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Replaces sealed private halves in one transaction: each
    /// `(kid, old, new)` is written only if the row still holds `old`, and
    /// the master key fingerprint moves from `old_fp` to `new_fp`. Any
    /// mismatch changes nothing and is an error.
    async fn reseal(
        &self,
        old_fp: &str,
        new_fp: &str,
        blobs: &[(Kid, Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError>;
    /// Deletes the audit records older than `before` (unix seconds), oldest
    /// first and never the newest record, and keeps the (seq, hash) of the
    /// last deleted one as the anchor the chain now starts from. Returns how
    /// many were deleted.
    async fn prune_audit(&self, before: i64) -> Result<u64, StoreError>;
    /// The (seq, hash) the first stored audit record chains to: `None`
    /// until a pruning, meaning the genesis hash before record 1.
    async fn audit_anchor(&self) -> Result<Option<(i64, String)>, StoreError>;
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

/// The migrations of one database, in order (`sqlite.rs` and
/// `postgres.rs` each ship theirs, compiled into the binary: a deployed
/// daemon never looks for SQL files on disk). Both schemas move in step,
/// so the versions and descriptions are named once.
fn migrator(sql: [&'static str; 3]) -> Migrator {
    const DESCRIPTIONS: [&str; 3] = ["keys and audit", "lease", "live keys index"];
    Migrator::with_migrations(
        (1..)
            .zip(DESCRIPTIONS.into_iter().zip(sql))
            .map(|(version, (description, sql))| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// How the audit anchor (seq, hash) is kept in `meta`: `"<seq>:<hash>"`.
pub(crate) fn format_anchor(seq: i64, hash: &str) -> String {
    format!("{seq}:{hash}")
}

/// Reads an anchor written by [`format_anchor`].
pub(crate) fn parse_anchor(v: &str) -> Result<(i64, String), StoreError> {
    v.split_once(':')
        .and_then(|(seq, hash)| Some((seq.parse().ok()?, hash.to_owned())))
        .ok_or_else(|| StoreError::Corrupt(format!("audit anchor {v:?}")))
}

/// The preconditions of [`Store::reseal`], checked inside its transaction:
/// the store is bound to `old_fp`, and `blobs` covers every private half
/// the store holds (`held`), so no key is left sealed under the old key.
pub(crate) fn check_reseal(
    stored_fp: Option<&str>,
    old_fp: &str,
    held: i64,
    blobs: usize,
) -> Result<(), StoreError> {
    if stored_fp != Some(old_fp) {
        return Err(StoreError::ResealConflict(format!(
            "the store is bound to master key {stored_fp:?}, not {old_fp}"
        )));
    }
    if held != blobs as i64 {
        return Err(StoreError::ResealConflict(format!(
            "{held} private halves in the store, {blobs} re-sealed"
        )));
    }
    Ok(())
}

/// Opens the store for reading (`jwksd jwks`): SQLite read-only, never
/// created or migrated; PostgreSQL through the normal open (migrations are
/// idempotent and a reader needs the same schema).
pub async fn open_read_only(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open_read_only(path).await?)),
        StoreUrl::Postgres(_) => open(url).await,
    }
}

/// Opens (and migrates) the store named by the config.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreUrl::Postgres(url) => Ok(Arc::new(PostgresStore::open(url).await?)),
    }
}
