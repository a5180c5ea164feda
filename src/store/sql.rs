//! The [`Store`] written once over sqlx, for every [`Dialect`]: reads, the
//! audit chain's pool path, re-sealing, pruning and the lease. The key
//! changes themselves are in `transitions.rs`; what differs between the
//! databases is in the dialect (`sqlite.rs`, `postgres.rs`).
//!
//! SQL here is the text both databases run: numbered `$N` parameters, the
//! column lists and row tuples of `rows.rs`, and standard syntax only
//! (`ON CONFLICT`, `CAST`, a named derived table).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Database, Encode, FromRow, Type};
use tokio::sync::Notify;

use super::api::{ChainSwitch, LIFECYCLE_LEASE, Store, StoreError};
use super::dialect::{Dialect, Publish, RowsAffected as _};
use super::rows::{
    AUDIT_COLUMNS, AUDIT_TAIL, AuditRow, KEY_COLUMNS, KeyRow, audit_from_row, audit_values,
    insert_sql, key_from_row,
};
use crate::audit::chain::{Anchor, AuditEntry, AuditRecord, chain_after, switch_after};
use crate::audit::key::AuditKey;
use crate::lifecycle::model::{Applied, Change, StoredKey};
use crate::types::Kid;

/// A store on one database: its pool, the handle its key changes are
/// announced on, and what its dialect keeps beside them (SQLite's audit
/// thread, PostgreSQL's listener task). Clones share all three.
#[derive(Debug, Clone)]
pub struct SqlStore<D: Dialect> {
    pub(super) pool: sqlx::Pool<D::DB>,
    pub(super) changes: Arc<Notify>,
    pub(super) dialect: D,
}

/// A connection of dialect `D`'s database.
pub(super) type Conn<D> = <<D as Dialect>::DB as Database>::Connection;

/// A value the store binds on `DB` (a bound written once per type).
pub trait Bind<DB: Database>: for<'t> Encode<'t, DB> + Type<DB> {}
impl<DB: Database, T: for<'t> Encode<'t, DB> + Type<DB>> Bind<DB> for T {}

/// A row tuple the store reads from `DB`.
pub trait Fetch<DB: Database>: for<'r> FromRow<'r, DB::Row> {}
impl<DB: Database, T: for<'r> FromRow<'r, DB::Row>> Fetch<DB> for T {}

/// Rows per audit INSERT: 16 binds a row keeps a statement under SQLite's
/// 32,766 and PostgreSQL's 65,535 bind parameters.
pub(super) const AUDIT_ROWS_PER_INSERT: usize = 1000;

pub(super) fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl<D: Dialect> SqlStore<D> {
    /// Wraps an open, migrated pool.
    pub(super) fn new(pool: sqlx::Pool<D::DB>, changes: Arc<Notify>, dialect: D) -> Self {
        SqlStore {
            pool,
            changes,
            dialect,
        }
    }

    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, D::DB>, StoreError> {
        self.pool.begin_with(D::BEGIN_WRITE).await.map_err(backend)
    }

    /// The work that follows a committed key change.
    pub(super) async fn committed(&self, change: &Change) {
        if matches!(D::PUBLISH, Publish::AfterCommit) {
            self.changes.notify_one();
        }
        if matches!(change, Change::Activate { .. } | Change::Revoke { .. }) {
            D::after_erasure(&self.pool).await;
        }
    }
}

impl<D> SqlStore<D>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::DB>,
    <D::DB as Database>::Arguments: sqlx::IntoArguments<D::DB>,
    (i64, String): Fetch<D::DB>,
    (String,): Fetch<D::DB>,
    String: Bind<D::DB>,
    Option<String>: Bind<D::DB>,
    i64: Bind<D::DB>,
    Option<i64>: Bind<D::DB>,
{
    /// Inserts chained `records` on `conn`, inside the caller's
    /// transaction and under its audit lock.
    async fn insert_audit(conn: &mut Conn<D>, records: &[AuditRecord]) -> Result<(), StoreError> {
        for chunk in records.chunks(AUDIT_ROWS_PER_INSERT) {
            // One multi-row statement per chunk: one statement per record
            // cost a round trip each (to sqlx's SQLite worker thread, or
            // over the PostgreSQL socket), which made a group commit, and
            // every signature waiting for it, slower than its fsync. One
            // text per batch size: under steady load the sizes repeat, and
            // the per-connection statement cache keeps them prepared.
            let sql = insert_sql("audit", AUDIT_COLUMNS, chunk.len());
            let mut insert = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                // In column order. sqlx encodes `Option` per database, so
                // code generic over the database binds the optional texts
                // owned (a bound over every borrowed `Option<&String>`
                // trips a compiler limitation in async code).
                let v = audit_values(r);
                insert = insert
                    .bind(v.0)
                    .bind(v.1)
                    .bind(v.2.clone())
                    .bind(v.3.clone())
                    .bind(v.4)
                    .bind(v.5)
                    .bind(v.6)
                    .bind(v.7.cloned())
                    .bind(v.8.cloned())
                    .bind(v.9.cloned())
                    .bind(v.10.cloned())
                    .bind(v.11.cloned())
                    .bind(v.12.cloned())
                    .bind(v.13.clone())
                    .bind(v.14.clone())
                    .bind(v.15.cloned());
            }
            insert.execute(&mut *conn).await.map_err(backend)?;
        }
        Ok(())
    }

    /// The stored anchor, read on `conn`.
    async fn read_anchor(conn: &mut Conn<D>) -> Result<Option<Anchor>, StoreError> {
        let v: Option<(String,)> =
            sqlx::query_as("SELECT value FROM meta WHERE name = 'audit_anchor'")
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
        v.map(|(v,)| {
            Anchor::parse(&v).ok_or_else(|| StoreError::Corrupt(format!("audit anchor {v:?}")))
        })
        .transpose()
    }

    /// Writes the anchor on `conn`.
    async fn write_anchor(conn: &mut Conn<D>, anchor: &Anchor) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('audit_anchor', $1) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(anchor.format())
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

/// The `meta` names of the chain keys' wraps: `audit_key_wrap:<older id>`,
/// valued `<newer id>:<wrap>`.
const WRAP_PREFIX: &str = "audit_key_wrap:";

/// The query behind [`Store::live_keys`].
fn live_keys_sql() -> String {
    format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE state IN ('pending', 'active', 'retiring') \
         UNION ALL \
         SELECT {KEY_COLUMNS} FROM keys \
         JOIN (SELECT set_name AS top_set, alg AS top_alg, MAX(version) AS top_version \
               FROM keys GROUP BY set_name, alg) top \
           ON set_name = top_set AND alg = top_alg AND version = top_version \
         WHERE state NOT IN ('pending', 'active', 'retiring') \
         ORDER BY set_name, alg, version"
    )
}

#[async_trait]
impl<D> Store for SqlStore<D>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::DB>,
    <D::DB as Database>::Arguments: sqlx::IntoArguments<D::DB>,
    KeyRow: Fetch<D::DB>,
    AuditRow: Fetch<D::DB>,
    (i64, String): Fetch<D::DB>,
    (String, String): Fetch<D::DB>,
    (String,): Fetch<D::DB>,
    (i64,): Fetch<D::DB>,
    (Option<i64>,): Fetch<D::DB>,
    &'static str: Bind<D::DB>,
    String: Bind<D::DB>,
    Option<String>: Bind<D::DB>,
    Vec<u8>: Bind<D::DB>,
    Option<Vec<u8>>: Bind<D::DB>,
    i64: Bind<D::DB>,
    Option<i64>: Bind<D::DB>,
    bool: Bind<D::DB>,
{
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY set_name, alg, version");
        let rows: Vec<KeyRow> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(key_from_row).collect()
    }

    async fn live_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(AssertSqlSafe(live_keys_sql()))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(key_from_row).collect()
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
        self.apply_change(change).await
    }

    async fn bind_master_key(&self, fingerprint: &str) -> Result<(), StoreError> {
        // Insert-if-absent then compare: two processes binding at once both
        // end up comparing against the one fingerprint that won.
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('master_key_fingerprint', $1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(fingerprint.to_owned())
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

    async fn append_audit(
        &self,
        key: &Arc<AuditKey>,
        entries: &[AuditEntry],
    ) -> Result<Vec<AuditRecord>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(appender) = self.dialect.audit_appender() {
            return appender.append(key, entries).await;
        }
        let mut tx = self.begin_write().await?;
        if let Some(lock) = D::LOCK_AUDIT {
            sqlx::query(lock).execute(&mut *tx).await.map_err(backend)?;
        }
        // Read under the append lock, so the chain never forks.
        let last: Option<(i64, String)> = sqlx::query_as(AUDIT_TAIL)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let records = chain_after(last, key, entries);
        Self::insert_audit(&mut tx, &records).await?;
        tx.commit().await.map_err(backend)?;
        Ok(records)
    }

    async fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT $1) AS t ORDER BY seq"
        );
        let rows: Vec<AuditRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }

    async fn audit_all(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq");
        let rows: Vec<AuditRow> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }

    async fn reseal(
        &self,
        old_fp: &str,
        new_fp: &str,
        blobs: &[(Kid, Vec<u8>, Vec<u8>)],
        switch: &ChainSwitch<'_>,
    ) -> Result<AuditRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        for lock in D::LOCK_KEYS.iter().chain(D::LOCK_AUDIT.as_slice()) {
            sqlx::query(*lock)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
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
        check_reseal(stored.as_deref(), old_fp, held, blobs.len())?;
        for (kid, old, new) in blobs {
            let res = sqlx::query(
                "UPDATE keys SET sealed_private = $1 WHERE kid = $2 AND sealed_private = $3",
            )
            .bind(new)
            .bind(kid.to_string())
            .bind(old)
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
            .bind(new_fp.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // The audit chain passes to the new key in the same commit: there
        // is never a store on the new master key whose chain ends under
        // the old one.
        let last: Option<(i64, String)> = sqlx::query_as(AUDIT_TAIL)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let record = switch_after(last, switch.old, switch.new, switch.entry.clone());
        Self::insert_audit(&mut tx, std::slice::from_ref(&record)).await?;
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(format!("{WRAP_PREFIX}{}", switch.old.id()))
        .bind(format!("{}:{}", switch.new.id(), switch.wrap))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // An anchor the old key does not authenticate stays as it is, for
        // `audit verify` to report.
        if let Some(a) = Self::read_anchor(&mut tx).await?
            && (a.mac.is_none() || a.is_authentic(switch.old))
        {
            Self::write_anchor(&mut tx, &Anchor::keyed(switch.new, a.seq, a.hash)).await?;
        }
        tx.commit().await.map_err(backend)?;
        // The old ciphertexts are erased too.
        D::after_erasure(&self.pool).await;
        Ok(record)
    }

    async fn prune_audit(&self, key: &AuditKey, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(lock) = D::LOCK_AUDIT {
            sqlx::query(lock).execute(&mut *tx).await.map_err(backend)?;
        }
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
        Self::write_anchor(&mut tx, &Anchor::keyed(key, seq, hash)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(res.rows_affected())
    }

    async fn audit_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        Self::read_anchor(&mut conn).await
    }

    async fn key_legacy_anchor(&self, key: &AuditKey) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(lock) = D::LOCK_AUDIT {
            sqlx::query(lock).execute(&mut *tx).await.map_err(backend)?;
        }
        let Some(a) = Self::read_anchor(&mut tx)
            .await?
            .filter(|a| a.mac.is_none())
        else {
            return Ok(None);
        };
        let seq = a.seq;
        Self::write_anchor(&mut tx, &Anchor::keyed(key, a.seq, a.hash)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(seq))
    }

    async fn audit_key_wraps(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, value FROM meta WHERE substr(name, 1, 15) = 'audit_key_wrap:'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter()
            .map(|(name, value)| {
                let older = name.strip_prefix(WRAP_PREFIX);
                let newer = value.split_once(':');
                match (older, newer) {
                    (Some(o), Some((n, w))) => Ok((o.to_owned(), n.to_owned(), w.to_owned())),
                    _ => Err(StoreError::Corrupt(format!("audit key wrap {name:?}"))),
                }
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn acquire_lease(&self, holder: &str, ttl_secs: u32) -> Result<bool, StoreError> {
        // One statement, so the check and the write are atomic (PostgreSQL:
        // the row lock ON CONFLICT takes); both sides of the expiry
        // comparison use the database clock.
        let now = D::NOW_MS;
        let sql = format!(
            "INSERT INTO lease (name, holder, expires_at_ms) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE lease.holder = excluded.holder OR lease.expires_at_ms < {now}"
        );
        let res = sqlx::query(AssertSqlSafe(sql))
            .bind(LIFECYCLE_LEASE)
            .bind(holder.to_owned())
            .bind(i64::from(ttl_secs) * 1000)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected() == 1)
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM lease WHERE name = $1 AND holder = $2")
            .bind(LIFECYCLE_LEASE)
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}

/// The preconditions of [`Store::reseal`], checked inside its transaction:
/// the store is bound to `old_fp`, and `blobs` covers every private half
/// the store holds (`held`), so no key is left sealed under the old key.
fn check_reseal(
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
