//! The embedded default store: one SQLite file in WAL mode, and SQLite's
//! [`Dialect`]. The rules are the shared ones (`sql.rs`, `transitions.rs`);
//! this file owns how the file is opened and what SQLite needs around them.
//!
//! Writes take the database lock up front (`BEGIN IMMEDIATE`) so that a
//! transaction that re-checks a precondition and then writes can never be
//! overtaken between the two; that one lock also serializes audit appends
//! and re-seals, so SQLite needs no other lock statement.
//!
//! SQLite serves one process (several processes on one file are not a
//! supported replica set), so [`Store::changes`](super::api::Store::changes) is
//! signalled after this process's own commits only, and the lease, while
//! implemented with the same semantics as on PostgreSQL, normally has a
//! single contender.
//!
//! `secure_delete` overwrites an erased private half in the main file, but
//! the WAL keeps old page images until it is checkpointed: every commit
//! that erases one is followed by [`truncate_wal`].

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Notify;

use super::api::StoreError;
use super::dialect::{Dialect, Publish};
use super::sql::{SqlStore, backend};
use super::sqlite_audit::AuditAppender;

/// A SQLite-backed [`Store`](super::api::Store).
pub type SqliteStore = SqlStore<SqliteDialect>;

/// SQLite's spelling of what differs, and its audit appender.
#[derive(Debug, Clone, Default)]
pub struct SqliteDialect {
    /// Appends audit batches on its own connection and thread (see
    /// `sqlite_audit.rs`); `None` for an in-memory or read-only store,
    /// which append through the pool.
    audit: Option<Arc<AuditAppender>>,
}

impl Dialect for SqliteDialect {
    type DB = Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    /// `julianday('now')` rather than `unixepoch()`: same clock, but
    /// millisecond resolution on every SQLite version (`unixepoch('subsec')`
    /// needs 3.42).
    const NOW_MS: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
    const LOCK_SET_ALG: Option<&'static str> = None;
    const LOCK_AUDIT: Option<&'static str> = None;
    const LOCK_KEYS: &'static [&'static str] = &[];
    const PUBLISH: Publish = Publish::AfterCommit;

    fn audit_appender(&self) -> Option<&AuditAppender> {
        self.audit.as_deref()
    }

    async fn after_erasure(pool: &SqlitePool) {
        truncate_wal(pool).await;
    }
}

/// The migrations, compiled into the binary.
const MIGRATIONS: [&str; 5] = [
    include_str!("../../migrations/sqlite/0001_keys_and_audit.sql"),
    include_str!("../../migrations/sqlite/0002_lease.sql"),
    include_str!("../../migrations/sqlite/0003_live_keys.sql"),
    include_str!("../../migrations/sqlite/0004_keyed_audit_chain.sql"),
    include_str!("../../migrations/sqlite/0005_key_backends.sql"),
];

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its directory) if
    /// missing, and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Keys are irreplaceable: every commit reaches the disk.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Erased private halves are overwritten, not left in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A COMMIT that fails (disk full, EFBIG past RLIMIT_FSIZE, I/O
            // error) leaves sqlx believing the connection is still inside a
            // transaction, and every later `begin` on it fails ("non-zero
            // transaction depth"): the store would never recover. Such a
            // connection is closed instead of reused.
            .before_acquire(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect_with(options)
            .await
            .map_err(backend)?;
        let mut store = SqliteStore::migrated(pool).await?;
        store.dialect.audit = Some(Arc::new(AuditAppender::start(path)?));
        Ok(store)
    }

    /// Applies pending migrations to `pool` and wraps it.
    async fn migrated(pool: SqlitePool) -> Result<Self, StoreError> {
        super::migrations::migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(SqliteStore::new(
            pool,
            Arc::new(Notify::new()),
            SqliteDialect::default(),
        ))
    }

    /// Opens an existing database for reading only: never creates it, never
    /// migrates it (for `jwksd jwks`, which may run as another user).
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Backend(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Ok(SqliteStore::new(
            pool,
            Arc::new(Notify::new()),
            SqliteDialect::default(),
        ))
    }
}

impl SqliteStore {
    /// A private in-memory database (for `jwksd simulate` and tests of pure
    /// lifecycle behaviour): one connection, kept for the store's lifetime,
    /// since every new connection to `:memory:` would see an empty database.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(backend)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend)?;
        SqliteStore::migrated(pool).await
    }
}

/// Copies the WAL into the main file and truncates it, so that page
/// images of erased rows do not survive there. A busy answer (a reader
/// on an old snapshot, or the audit appender's own checkpoint running)
/// is retried for about two seconds, then logged: the images stay in
/// the WAL until it is next truncated, and the operator should know.
async fn truncate_wal(pool: &SqlitePool) {
    // `TRUNCATE` holds every writer off while it copies, and the audit
    // appender writes all the time under load: a `PASSIVE` pass first
    // copies the bulk without blocking anyone, so the blocking pass only
    // has the last few frames to copy (BENCHMARKS.md, "the SQLite audit
    // appender": p99 during a rotation that erases a key).
    let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(pool)
        .await;
    // Retried for about two seconds after the first try; one try may
    // itself wait up to the busy timeout for readers to move on.
    let give_up = std::time::Instant::now() + Duration::from_secs(2);
    let mut pause = Duration::from_millis(10);
    let last = loop {
        // Columns: busy (1 when it could not finish), WAL frames,
        // frames copied.
        let why = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await
        {
            Ok((0, _, _)) => return,
            Ok(_) => "busy".to_owned(),
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() >= give_up {
            break why;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    };
    tracing::warn!(
        reason = %last,
        "the WAL could not be truncated after a private half was erased; its old page images stay in the -wal file until the next truncation"
    );
}
