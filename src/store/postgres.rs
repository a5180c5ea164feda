//! The shared store: PostgreSQL, for several replicas on one database.
//!
//! Same tables, constraints and semantics as `sqlite.rs` (the conformance
//! suite in `tests/store_conformance.rs` runs against both). What differs is
//! how writers are kept apart, since here they are separate processes:
//!
//! - Every [`Change`] first takes a transaction-scoped advisory lock on its
//!   (set, alg) (`pg_advisory_xact_lock(KEYS_LOCK, hashtext(set/alg))`), so
//!   the precondition re-check and the write of two replicas cannot
//!   interleave; under READ COMMITTED every statement after the lock sees
//!   everything committed before it was granted. The partial unique indexes
//!   stay as the last fence: a unique violation is reported as
//!   [`Applied::Stale`], never as an error.
//! - The audit append takes `LOCK TABLE audit IN EXCLUSIVE MODE` (readers go
//!   on; writers queue), so two appenders can never chain to the same record.
//! - Each committed key change runs `pg_notify('jwksd_keys', <revision>)`
//!   inside its transaction; a background task `LISTEN`s on a dedicated
//!   connection and signals [`Store::changes`].
//!
//! Lock order: a key change holds at most one advisory lock and then the
//! `meta.revision` row, always in that order, so changes cannot deadlock.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, SqlSafeStr, Transaction};
use tokio::sync::Notify;

use super::{
    AUDIT_COLUMNS, LIFECYCLE_LEASE, Store, StoreError, TxError, append_audit_in, moved_one,
};
use crate::audit::{AuditEntry, AuditRecord};
use crate::lifecycle::model::{Applied, Change, StoredKey};
use crate::types::{Alg, KeyState, Kid, SetName};

/// The channel every committed key change notifies.
pub const CHANGES_CHANNEL: &str = "jwksd_keys";

/// First key of the two-int advisory lock space used for (set, alg) locks
/// ("jwks" in ASCII), so they cannot collide with sqlx's migration lock
/// (one-bigint space) or another application's locks.
const KEYS_LOCK: i32 = 0x6a77_6b73;

/// Connections in the pool. Requests are short; the lease, the scheduler
/// and the auditor need one each, the rest serve refreshes and admin calls.
const POOL_SIZE: u32 = 8;
/// How long a request waits for a connection (including establishing one)
/// before failing: a dead database fails fast instead of hanging callers.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle listener connection is pinged this often, so a half-open TCP
/// connection (no RST ever arrives) is found and replaced.
const LISTEN_IDLE_PING: Duration = Duration::from_secs(30);
/// Longest wait between two reconnection attempts of the listener.
const LISTEN_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The database clock in unix milliseconds.
const NOW_MS: &str = "(extract(epoch from now()) * 1000)::bigint";

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            Cow::Borrowed("keys and audit"),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0001_keys_and_audit.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            Cow::Borrowed("lease"),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0002_lease.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            Cow::Borrowed("live keys index"),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0003_live_keys.sql").into_sql_str(),
            false,
        ),
    ])
}

/// A PostgreSQL-backed [`Store`]. Dropping the last clone stops its
/// listener task.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    changes: Arc<Notify>,
    _listener: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host/db?sslmode=require`,
    /// every libpq-style parameter sqlx understands), applies pending
    /// migrations (serialized across replicas by sqlx's migration lock) and
    /// starts listening for other writers' changes.
    ///
    /// Errors: [`StoreError::Backend`] when the database does not answer
    /// within 5 s or refuses the connection; [`StoreError::Migrate`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // Error texts never include the URL: it may hold a password.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("jwksd");
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        // The first LISTEN happens before `open` returns, so a change
        // committed by anyone after `open` is never missed.
        let listener = listen(&options).await.map_err(backend)?;
        let changes = Arc::new(Notify::new());
        let task = tokio::spawn(listen_loop(options, listener, changes.clone()));
        Ok(PostgresStore {
            pool,
            changes,
            _listener: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// A fresh one-connection pool per listener: a connection found dead is
/// dropped with its pool and never handed out again.
async fn listen(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    Ok(listener)
}

/// Forwards notifications to `changes` for as long as the store lives,
/// reconnecting with backoff. After every reconnection it signals once,
/// since changes committed while it was away were not notified to it.
async fn listen_loop(options: PgConnectOptions, first: PgListener, changes: Arc<Notify>) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut listener = match current.take() {
            Some(l) => l,
            None => match listen(&options).await {
                Ok(l) => {
                    tracing::info!("listening for key changes again");
                    backoff = Duration::from_millis(250);
                    changes.notify_one();
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "cannot listen for key changes; replicas fall back to polling");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LISTEN_MAX_BACKOFF);
                    continue;
                }
            },
        };
        loop {
            match tokio::time::timeout(LISTEN_IDLE_PING, listener.try_recv()).await {
                Ok(Ok(Some(_))) => changes.notify_one(),
                // sqlx lost the connection and has reconnected and listened
                // again (eager reconnect): anything in between was missed.
                Ok(Ok(None)) => changes.notify_one(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "key change listener failed; reconnecting");
                    break;
                }
                Err(_idle) => {
                    let ping = sqlx::query("SELECT 1").execute(&mut listener);
                    if !matches!(tokio::time::timeout(ACQUIRE_TIMEOUT, ping).await, Ok(Ok(_))) {
                        tracing::warn!("key change listener connection is dead; reconnecting");
                        break;
                    }
                }
            }
        }
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

fn key_from_row(row: &PgRow) -> Result<StoredKey, StoreError> {
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
        emergency: row.try_get("emergency").map_err(backend)?,
    })
}

type Tx = Transaction<'static, Postgres>;

/// Serializes every change to one (set, alg) until the transaction ends.
async fn lock_set_alg(tx: &mut Tx, set: &str, alg: &str) -> Result<(), TxError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3))")
        .bind(KEYS_LOCK)
        .bind(set)
        .bind(alg)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes the (set, alg) lock of `kid` and then reads the key afresh. A
/// key's set and alg never change, so reading them before the lock is safe;
/// its state is only trusted from the read after it.
async fn lock_key(tx: &mut Tx, kid: &str) -> Result<Option<StoredKey>, TxError> {
    let owner: Option<(String, String)> =
        sqlx::query_as("SELECT set_name, alg FROM keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((set, alg)) = owner else {
        return Ok(None);
    };
    lock_set_alg(tx, &set, &alg).await?;
    key_by_kid(tx, kid).await
}

async fn key_by_kid(tx: &mut Tx, kid: &str) -> Result<Option<StoredKey>, TxError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE kid = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(kid)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(key_from_row).transpose()?)
}

async fn key_in_state(
    tx: &mut Tx,
    set: &SetName,
    alg: Alg,
    state: KeyState,
) -> Result<Option<StoredKey>, TxError> {
    let sql =
        format!("SELECT {KEY_COLUMNS} FROM keys WHERE set_name = $1 AND alg = $2 AND state = $3");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(set.as_str())
        .bind(alg.as_str())
        .bind(state.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(key_from_row).transpose()?)
}

/// Active -> retiring, private half erased.
async fn deactivate(
    tx: &mut Tx,
    kid: &Kid,
    at: DateTime<Utc>,
    retire_at: DateTime<Utc>,
) -> Result<(), TxError> {
    let res = sqlx::query(
        "UPDATE keys SET state = 'retiring', sealed_private = NULL, deactivate_at = $1, retire_at = $2 \
         WHERE kid = $3 AND state = 'active'",
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
    tx: &mut Tx,
    kid: &Kid,
    at: DateTime<Utc>,
    emergency: bool,
) -> Result<(), TxError> {
    let res = sqlx::query(
        "UPDATE keys SET state = 'active', activate_at = $1, emergency = $2 \
         WHERE kid = $3 AND state = 'pending'",
    )
    .bind(ts(at))
    .bind(emergency)
    .bind(kid.as_str())
    .execute(&mut **tx)
    .await?;
    moved_one(res.rows_affected(), kid, "pending")
}

fn done(activated: Option<Kid>, deactivated: Option<Kid>) -> Applied {
    Applied::Done {
        activated,
        deactivated,
    }
}

/// The precondition checks and writes of one change; mirrors
/// `SqliteStore::apply_in` rule for rule.
async fn apply_in(tx: &mut Tx, change: &Change) -> Result<Applied, TxError> {
    match change {
        Change::Insert(key) => {
            lock_set_alg(tx, key.set.as_str(), key.alg.as_str()).await?;
            let max: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM keys WHERE set_name = $1 AND alg = $2",
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
                "INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
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
                .bind(key.emergency)
                .execute(&mut **tx)
                .await?;
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
            lock_set_alg(tx, set.as_str(), alg.as_str()).await?;
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
            if lock_key(tx, kid.as_str()).await?.is_none() {
                return Ok(Applied::Stale(format!("{kid} is not retiring or not due")));
            }
            let res = sqlx::query(
                "UPDATE keys SET state = 'retired' WHERE kid = $1 AND state = 'retiring' AND retire_at <= $2",
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
            let Some(key) = lock_key(tx, kid.as_str()).await? else {
                return Err(StoreError::UnknownKid(kid.to_string()).into());
            };
            if !key.state.is_published() {
                return Ok(Applied::Stale(format!("{kid} is already {}", key.state)));
            }
            let was_active = key.state == KeyState::Active;
            sqlx::query(
                "UPDATE keys SET state = 'revoked', sealed_private = NULL, \
                 deactivate_at = CASE WHEN state = 'active' THEN $1 ELSE deactivate_at END, \
                 retire_at = $1 WHERE kid = $2",
            )
            .bind(ts(*at))
            .bind(kid.as_str())
            .execute(&mut **tx)
            .await?;
            let mut activated = None;
            if was_active
                && let Some(next) = key_in_state(tx, &key.set, key.alg, KeyState::Pending).await?
            {
                activate(tx, &next.kid, *at, true).await?;
                activated = Some(next.kid);
            }
            let deactivated = was_active.then(|| kid.clone());
            Ok(done(activated, deactivated))
        }
        Change::Reschedule { kid, activate_at } => {
            // Under the lock, so a concurrent Activate either sees the new
            // time or has already made the key active (and this is Stale).
            if lock_key(tx, kid.as_str()).await?.is_none() {
                return Ok(Applied::Stale(format!("{kid} is not pending")));
            }
            let res = sqlx::query(
                "UPDATE keys SET activate_at = $1 WHERE kid = $2 AND state = 'pending'",
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

/// Applies `change` and, if it is done, bumps the revision and notifies
/// listeners, all in `tx` (the notification is delivered on commit only).
async fn apply_and_publish(tx: &mut Tx, change: &Change) -> Result<Applied, TxError> {
    let applied = apply_in(tx, change).await?;
    if matches!(applied, Applied::Done { .. }) {
        let revision: String = sqlx::query_scalar(
            "UPDATE meta SET value = (value::bigint + 1)::text WHERE name = 'revision' RETURNING value",
        )
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(revision)
            .execute(&mut **tx)
            .await?;
    }
    Ok(applied)
}

fn audit_from_row(row: &PgRow) -> Result<AuditRecord, StoreError> {
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
impl Store for PostgresStore {
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let outcome = match apply_and_publish(&mut tx, change).await {
            Ok(applied @ Applied::Done { .. }) => match tx.commit().await {
                Ok(()) => return Ok(applied),
                Err(e) => return Err(backend(e)),
            },
            Ok(stale) => Ok(stale),
            Err(TxError::Conflict(reason)) => Ok(Applied::Stale(reason)),
            Err(TxError::Store(e)) => Err(e),
        };
        // Nothing was written, or the transaction is already aborted; a
        // failed rollback only means the connection is gone, which rolls
        // back just the same.
        let _ = tx.rollback().await;
        outcome
    }

    async fn bind_master_key(&self, fingerprint: &str) -> Result<(), StoreError> {
        // Insert-if-absent then compare: two replicas binding at once both
        // end up comparing against the one fingerprint that won.
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('master_key_fingerprint', $1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(fingerprint)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let stored: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'master_key_fingerprint'")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        if stored != fingerprint {
            return Err(StoreError::WrongMasterKey {
                stored,
                given: fingerprint.to_owned(),
            });
        }
        Ok(())
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Appenders queue here, so each reads the true last record and the
        // chain never forks; readers are not blocked.
        sqlx::query("LOCK TABLE audit IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let records = append_audit_in::<Postgres>(&mut tx, entries).await?;
        tx.commit().await.map_err(backend)?;
        Ok(records)
    }

    async fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT $1) AS t ORDER BY seq"
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // No key change may run meanwhile: lock every key row.
        sqlx::query("LOCK TABLE keys IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT value FROM meta WHERE name = 'master_key_fingerprint' FOR UPDATE",
        )
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
                "UPDATE keys SET sealed_private = $1 WHERE kid = $2 AND sealed_private = $3",
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
        sqlx::query("UPDATE meta SET value = $1 WHERE name = 'master_key_fingerprint'")
            .bind(new_fp)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn prune_audit(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("LOCK TABLE audit IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let last: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM audit WHERE at < $1 AND seq < (SELECT MAX(seq) FROM audit) \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(before)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some((seq, hash)) = last else {
            return Ok(0);
        };
        let res = sqlx::query("DELETE FROM audit WHERE seq <= $1")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO meta (name, value) VALUES ('audit_anchor', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
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
        // One statement: the row lock taken by ON CONFLICT makes the check
        // and the write atomic, and both sides of the expiry comparison use
        // the database clock.
        let sql = format!(
            "INSERT INTO lease (name, holder, expires_at_ms) VALUES ($1, $2, {NOW_MS} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at_ms = EXCLUDED.expires_at_ms \
             WHERE lease.holder = EXCLUDED.holder OR lease.expires_at_ms < {NOW_MS}"
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
        sqlx::query("DELETE FROM lease WHERE name = $1 AND holder = $2")
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
