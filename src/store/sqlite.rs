//! The embedded default store: one SQLite file in WAL mode.
//!
//! Writes take the database lock up front (`BEGIN IMMEDIATE`) so that a
//! transaction that re-checks a precondition and then writes can never be
//! overtaken between the two.
//!
//! SQLite serves one process (several processes on one file are not a
//! supported replica set), so [`Store::changes`] is signalled after this
//! process's own commits only, and the lease, while implemented with the
//! same semantics as on PostgreSQL, normally has a single contender.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr, Sqlite, Transaction};
use tokio::sync::Notify;

use super::{
    AUDIT_COLUMNS, LIFECYCLE_LEASE, Store, StoreError, TxError, append_audit_in, moved_one,
    sqlite_audit::AuditAppender,
};
use crate::audit::{AuditEntry, AuditRecord};
use crate::lifecycle::model::{Applied, Change, StoredKey};
use crate::types::{Alg, KeyState, Kid, SetName};

/// Migrations are compiled into the binary: a deployed daemon never looks
/// for SQL files on disk.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            Cow::Borrowed("keys and audit"),
            MigrationType::Simple,
            include_str!("../../migrations/sqlite/0001_keys_and_audit.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            Cow::Borrowed("lease"),
            MigrationType::Simple,
            include_str!("../../migrations/sqlite/0002_lease.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            Cow::Borrowed("live keys index"),
            MigrationType::Simple,
            include_str!("../../migrations/sqlite/0003_live_keys.sql").into_sql_str(),
            false,
        ),
    ])
}

/// The database clock in unix milliseconds. `julianday('now')` rather than
/// `unixepoch()`: same clock, but millisecond resolution on every SQLite
/// version (`unixepoch('subsec')` needs 3.42).
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// A SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    changes: Arc<Notify>,
    /// Appends audit batches on its own connection and thread (see
    /// `sqlite_audit.rs`); `None` for an in-memory or read-only store,
    /// which append through the pool.
    audit: Option<Arc<AuditAppender>>,
}

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
        store.audit = Some(Arc::new(AuditAppender::start(path)?));
        Ok(store)
    }

    /// Applies pending migrations to `pool` and wraps it.
    async fn migrated(pool: SqlitePool) -> Result<Self, StoreError> {
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(SqliteStore {
            pool,
            changes: Arc::new(Notify::new()),
            audit: None,
        })
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
        Ok(SqliteStore {
            pool,
            changes: Arc::new(Notify::new()),
            audit: None,
        })
    }

    /// Copies the WAL into the main file and truncates it, so that page
    /// images of erased rows do not survive there. A busy answer (a reader
    /// on an old snapshot, or the audit appender's own checkpoint running)
    /// is retried for about two seconds, then logged: the images stay in
    /// the WAL until it is next truncated, and the operator should know.
    async fn truncate_wal(&self) {
        // `TRUNCATE` holds every writer off while it copies, and the audit
        // appender writes all the time under load: a `PASSIVE` pass first
        // copies the bulk without blocking anyone, so the blocking pass only
        // has the last few frames to copy. (Measured together with the
        // audit appender: ES384 p99 at 5,500/s during a rotation that erased
        // an RSA key went from 18-46 ms to 5-14 ms.)
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await;
        // Retried for about two seconds after the first try; one try may
        // itself wait up to the busy timeout for readers to move on.
        let give_up = std::time::Instant::now() + Duration::from_secs(2);
        let mut pause = Duration::from_millis(10);
        let last = loop {
            // Columns: busy (1 when it could not finish), WAL frames,
            // frames copied.
            let why = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
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

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn from_ts(secs: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {secs} out of range")))
}

fn opt_ts(secs: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    secs.map(from_ts).transpose()
}

const KEY_COLUMNS: &str = "kid, set_name, alg, version, state, public_jwk, sealed_private, \
     created_at, publish_at, activate_at, deactivate_at, retire_at, emergency";

fn key_from_row(row: &SqliteRow) -> Result<StoredKey, StoreError> {
    let get_str = |name: &str| -> Result<String, StoreError> {
        row.try_get::<String, _>(name).map_err(backend)
    };
    let corrupt = |e: crate::types::TypeError| StoreError::Corrupt(e.to_string());
    Ok(StoredKey {
        kid: Kid::from_stored(get_str("kid")?),
        set: SetName::new(&get_str("set_name")?).map_err(corrupt)?,
        alg: Alg::from_str(&get_str("alg")?).map_err(corrupt)?,
        version: u32::try_from(row.try_get::<i64, _>("version").map_err(backend)?)
            .map_err(|_| StoreError::Corrupt("version out of range".into()))?,
        state: KeyState::from_str(&get_str("state")?).map_err(corrupt)?,
        public_jwk: get_str("public_jwk")?,
        sealed_private: row.try_get("sealed_private").map_err(backend)?,
        created_at: from_ts(row.try_get("created_at").map_err(backend)?)?,
        publish_at: from_ts(row.try_get("publish_at").map_err(backend)?)?,
        activate_at: opt_ts(row.try_get("activate_at").map_err(backend)?)?,
        deactivate_at: opt_ts(row.try_get("deactivate_at").map_err(backend)?)?,
        retire_at: opt_ts(row.try_get("retire_at").map_err(backend)?)?,
        emergency: row.try_get::<i64, _>("emergency").map_err(backend)? != 0,
    })
}

async fn key_by_kid(
    tx: &mut Transaction<'static, Sqlite>,
    kid: &str,
) -> Result<Option<StoredKey>, TxError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE kid = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(kid)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(key_from_row).transpose()?)
}

async fn key_in_state(
    tx: &mut Transaction<'static, Sqlite>,
    set: &SetName,
    alg: Alg,
    state: KeyState,
) -> Result<Option<StoredKey>, TxError> {
    let sql =
        format!("SELECT {KEY_COLUMNS} FROM keys WHERE set_name = ? AND alg = ? AND state = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(set.as_str())
        .bind(alg.as_str())
        .bind(state.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(key_from_row).transpose()?)
}

async fn bump_revision(tx: &mut Transaction<'static, Sqlite>) -> Result<(), TxError> {
    sqlx::query("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'revision'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Active -> retiring, private half erased.
async fn deactivate(
    tx: &mut Transaction<'static, Sqlite>,
    kid: &Kid,
    at: DateTime<Utc>,
    retire_at: DateTime<Utc>,
) -> Result<(), TxError> {
    let res = sqlx::query(
        "UPDATE keys SET state = 'retiring', sealed_private = NULL, deactivate_at = ?, retire_at = ? \
         WHERE kid = ? AND state = 'active'",
    )
    .bind(ts(at))
    .bind(ts(retire_at))
    .bind(kid.as_str())
    .execute(&mut **tx)
    .await?;
    moved_one(res.rows_affected(), kid, "active")
}

/// Pending -> active.
async fn activate(
    tx: &mut Transaction<'static, Sqlite>,
    kid: &Kid,
    at: DateTime<Utc>,
    emergency: bool,
) -> Result<(), TxError> {
    let res = sqlx::query(
        "UPDATE keys SET state = 'active', activate_at = ?, emergency = ? \
         WHERE kid = ? AND state = 'pending'",
    )
    .bind(ts(at))
    .bind(emergency as i64)
    .bind(kid.as_str())
    .execute(&mut **tx)
    .await?;
    moved_one(res.rows_affected(), kid, "pending")
}

fn erases_private_half(change: &Change) -> bool {
    matches!(change, Change::Activate { .. } | Change::Revoke { .. })
}

fn done(activated: Option<Kid>, deactivated: Option<Kid>) -> Applied {
    Applied::Done {
        activated,
        deactivated,
    }
}

impl SqliteStore {
    async fn apply_in(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        change: &Change,
    ) -> Result<Applied, TxError> {
        match change {
            Change::Insert(key) => {
                let max: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(version) FROM keys WHERE set_name = ? AND alg = ?",
                )
                .bind(key.set.as_str())
                .bind(key.alg.as_str())
                .fetch_one(&mut **tx)
                .await?;
                let expected = max.unwrap_or(0) + 1;
                if i64::from(key.version) != expected {
                    return Ok(Applied::Stale(format!(
                        "version v{} is not the next one (v{expected})",
                        key.version
                    )));
                }
                if !matches!(key.state, KeyState::Pending | KeyState::Active) {
                    return Ok(Applied::Stale(format!(
                        "a new key cannot start {}",
                        key.state
                    )));
                }
                if let Some(other) = key_in_state(tx, &key.set, key.alg, key.state).await? {
                    return Ok(Applied::Stale(format!(
                        "{} is already {} for {}/{}",
                        other.kid, key.state, key.set, key.alg
                    )));
                }
                let sql = format!(
                    "INSERT INTO keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                );
                let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key.kid.as_str())
                    .bind(key.set.as_str())
                    .bind(key.alg.as_str())
                    .bind(i64::from(key.version))
                    .bind(key.state.as_str())
                    .bind(&key.public_jwk)
                    .bind(key.sealed_private.as_deref())
                    .bind(ts(key.created_at))
                    .bind(ts(key.publish_at))
                    .bind(key.activate_at.map(ts))
                    .bind(key.deactivate_at.map(ts))
                    .bind(key.retire_at.map(ts))
                    .bind(key.emergency as i64)
                    .execute(&mut **tx)
                    .await;
                // A kid that already exists (kids are never reused, rule 5)
                // is a lost race, not a database failure: same answer as on
                // PostgreSQL.
                if let Err(e) = inserted {
                    return match TxError::from(e) {
                        TxError::Conflict(_) => Ok(Applied::Stale(format!(
                            "{} conflicts with an existing key",
                            key.kid
                        ))),
                        other => Err(other),
                    };
                }
                let activated = (key.state == KeyState::Active).then(|| key.kid.clone());
                Ok(done(activated, None))
            }
            Change::Activate {
                set,
                alg,
                kid,
                at,
                retire_at,
                emergency,
            } => {
                let Some(pending) = key_by_kid(tx, kid.as_str()).await? else {
                    return Err(StoreError::UnknownKid(kid.to_string()).into());
                };
                if pending.set != *set || pending.alg != *alg {
                    return Ok(Applied::Stale(format!(
                        "{kid} belongs to {}/{}, not {set}/{alg}",
                        pending.set, pending.alg
                    )));
                }
                if pending.state != KeyState::Pending {
                    return Ok(Applied::Stale(format!(
                        "{kid} is {}, not pending",
                        pending.state
                    )));
                }
                if !emergency && pending.activate_at.is_none_or(|t| t > *at) {
                    return Ok(Applied::Stale(format!("{kid} is not due yet")));
                }
                let old = key_in_state(tx, set, *alg, KeyState::Active).await?;
                if let Some(old) = &old {
                    deactivate(tx, &old.kid, *at, *retire_at).await?;
                }
                activate(tx, kid, *at, *emergency).await?;
                Ok(done(Some(kid.clone()), old.map(|k| k.kid)))
            }
            Change::Retire { kid, at } => {
                let res = sqlx::query(
                    "UPDATE keys SET state = 'retired' WHERE kid = ? AND state = 'retiring' AND retire_at <= ?",
                )
                .bind(kid.as_str())
                .bind(ts(*at))
                .execute(&mut **tx)
                .await?;
                if res.rows_affected() == 0 {
                    return Ok(Applied::Stale(format!("{kid} is not retiring or not due")));
                }
                Ok(done(None, None))
            }
            Change::Revoke { kid, at } => {
                let Some(key) = key_by_kid(tx, kid.as_str()).await? else {
                    return Err(StoreError::UnknownKid(kid.to_string()).into());
                };
                if !key.state.is_published() {
                    return Ok(Applied::Stale(format!("{kid} is already {}", key.state)));
                }
                let was_active = key.state == KeyState::Active;
                sqlx::query(
                    "UPDATE keys SET state = 'revoked', sealed_private = NULL, \
                     deactivate_at = CASE WHEN state = 'active' THEN ? ELSE deactivate_at END, \
                     retire_at = ? WHERE kid = ?",
                )
                .bind(ts(*at))
                .bind(ts(*at))
                .bind(kid.as_str())
                .execute(&mut **tx)
                .await?;
                let mut activated = None;
                if was_active
                    && let Some(next) =
                        key_in_state(tx, &key.set, key.alg, KeyState::Pending).await?
                {
                    activate(tx, &next.kid, *at, true).await?;
                    activated = Some(next.kid);
                }
                let deactivated = was_active.then(|| kid.clone());
                Ok(done(activated, deactivated))
            }
            Change::Reschedule { kid, activate_at } => {
                let res = sqlx::query(
                    "UPDATE keys SET activate_at = ? WHERE kid = ? AND state = 'pending'",
                )
                .bind(ts(*activate_at))
                .bind(kid.as_str())
                .execute(&mut **tx)
                .await?;
                if res.rows_affected() == 0 {
                    return Ok(Applied::Stale(format!("{kid} is not pending")));
                }
                Ok(done(None, None))
            }
        }
    }
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    let u32_opt = |name: &str| -> Result<Option<u32>, StoreError> {
        let v: Option<i64> = row.try_get(name).map_err(backend)?;
        v.map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{name} out of range"))))
            .transpose()
    };
    let pid: Option<i64> = row.try_get("pid").map_err(backend)?;
    let pid = pid
        .map(|p| i32::try_from(p).map_err(|_| StoreError::Corrupt("pid out of range".into())))
        .transpose()?;
    Ok(AuditRecord {
        seq: row.try_get("seq").map_err(backend)?,
        entry: AuditEntry {
            at: row.try_get("at").map_err(backend)?,
            action: row.try_get("action").map_err(backend)?,
            outcome: row.try_get("outcome").map_err(backend)?,
            uid: u32_opt("uid")?,
            gid: u32_opt("gid")?,
            pid,
            exe: row.try_get("exe").map_err(backend)?,
            client_id: row.try_get("client_id").map_err(backend)?,
            audience: row.try_get("audience").map_err(backend)?,
            kid: row.try_get("kid").map_err(backend)?,
            jti: row.try_get("jti").map_err(backend)?,
            detail: row.try_get("detail").map_err(backend)?,
        },
        prev_hash: row.try_get("prev_hash").map_err(backend)?,
        hash: row.try_get("hash").map_err(backend)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY set_name, alg, version");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn live_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(super::live_keys_sql(KEY_COLUMNS)))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE name = 'revision'")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        v.parse()
            .map_err(|_| StoreError::Corrupt(format!("revision {v:?} is not a number")))
    }

    async fn apply(&self, change: &Change) -> Result<Applied, StoreError> {
        let mut tx = self.write_tx().await?;
        let outcome = match self.apply_in(&mut tx, change).await {
            Ok(applied @ Applied::Done { .. }) => bump_revision(&mut tx).await.map(|()| applied),
            other => other,
        };
        let outcome = match outcome {
            Ok(applied @ Applied::Done { .. }) => {
                tx.commit().await.map_err(backend)?;
                self.changes.notify_one();
                if erases_private_half(change) {
                    // secure_delete clears the main file's pages; the old page
                    // images in the WAL go when it is checkpointed and truncated.
                    self.truncate_wal().await;
                }
                return Ok(applied);
            }
            // As on PostgreSQL: a conflict on any statement of the change
            // is a lost race, and nothing of it is kept.
            Ok(stale) => Ok(stale),
            Err(TxError::Conflict(reason)) => Ok(Applied::Stale(reason)),
            Err(TxError::Store(e)) => Err(e),
        };
        tx.rollback().await.map_err(backend)?;
        outcome
    }

    async fn bind_master_key(&self, fingerprint: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'master_key_fingerprint'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        match stored {
            Some(stored) if stored != fingerprint => {
                return Err(StoreError::WrongMasterKey {
                    stored,
                    given: fingerprint.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO meta (name, value) VALUES ('master_key_fingerprint', ?)")
                    .bind(fingerprint)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(appender) = &self.audit {
            return appender.append(entries).await;
        }
        let mut tx = self.write_tx().await?;
        let records = append_audit_in::<Sqlite>(&mut tx, entries).await?;
        tx.commit().await.map_err(backend)?;
        Ok(records)
    }

    async fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT ?) ORDER BY seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn audit_all(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn reseal(
        &self,
        old_fp: &str,
        new_fp: &str,
        blobs: &[(Kid, Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'master_key_fingerprint'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        let held: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE sealed_private IS NOT NULL")
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        super::check_reseal(stored.as_deref(), old_fp, held, blobs.len())?;
        for (kid, old, new) in blobs {
            let res = sqlx::query(
                "UPDATE keys SET sealed_private = ? WHERE kid = ? AND sealed_private = ?",
            )
            .bind(new.as_slice())
            .bind(kid.as_str())
            .bind(old.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if res.rows_affected() != 1 {
                return Err(StoreError::ResealConflict(format!(
                    "{kid} changed meanwhile"
                )));
            }
        }
        sqlx::query("UPDATE meta SET value = ? WHERE name = 'master_key_fingerprint'")
            .bind(new_fp)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        // The old ciphertexts must not survive in the WAL either.
        self.truncate_wal().await;
        Ok(())
    }

    async fn prune_audit(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let last: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM audit WHERE at < ? AND seq < (SELECT MAX(seq) FROM audit) \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(before)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some((seq, hash)) = last else {
            return Ok(0);
        };
        let res = sqlx::query("DELETE FROM audit WHERE seq <= ?")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO meta (name, value) VALUES ('audit_anchor', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(super::format_anchor(seq, &hash))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(res.rows_affected())
    }

    async fn audit_anchor(&self) -> Result<Option<(i64, String)>, StoreError> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'audit_anchor'")
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        v.as_deref().map(super::parse_anchor).transpose()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn acquire_lease(&self, holder: &str, ttl_secs: u32) -> Result<bool, StoreError> {
        // One statement, so the check and the write are atomic; both sides
        // of the expiry comparison use the database clock.
        let sql = format!(
            "INSERT INTO lease (name, holder, expires_at_ms) VALUES (?1, ?2, {NOW_MS} + ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE lease.holder = excluded.holder OR lease.expires_at_ms < {NOW_MS}"
        );
        let res = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(LIFECYCLE_LEASE)
            .bind(holder)
            .bind(i64::from(ttl_secs) * 1000)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected() == 1)
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM lease WHERE name = ? AND holder = ?")
            .bind(LIFECYCLE_LEASE)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
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
