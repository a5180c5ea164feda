//! The key transitions, written once for every database: each [`Change`]
//! re-checks its preconditions and writes inside one write transaction
//! (`Dialect::BEGIN_WRITE`, plus the dialect's (set, alg) lock where it has
//! one), so several replicas, or a stale plan, can race safely.
//!
//! A change either happens whole or not at all. It is [`Applied::Stale`],
//! with nothing committed, when
//!
//! - a precondition no longer holds (read after the lock);
//! - a state update moves other than the one row it was written for: under
//!   the lock the row read a moment ago is still as read, so a miss means
//!   a writer that skipped the lock (or a trigger) moved it, and this
//!   transaction must not report a transition it did not make;
//! - any statement of the change hits a unique index: the partial indexes
//!   (one active, one pending key per (set, alg)) and the kid's primary key
//!   are the last fence, and hitting one means another writer got there
//!   first, not that the database failed.
//!
//! A committed change bumps `meta.revision` and is announced as the dialect
//! says ([`Publish`]). Lock order: at most one
//! (set, alg) lock, then the revision row, so changes cannot deadlock.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Database};

use super::api::StoreError;
use super::dialect::{Dialect, Publish, RowsAffected as _};
use super::rows::{KEY_COLUMNS, KeyRow, insert_sql, key_from_row, ts};
use super::sql::{Bind, Conn, Fetch, SqlStore, backend};
use crate::lifecycle::model::{Applied, Change, StoredKey};
use crate::types::{Alg, KeyState, Kid, SetName};

/// Why a key change transaction stopped early.
enum TxError {
    /// The change lost a race (see the module docs): it is Stale.
    Conflict(String),
    Store(StoreError),
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            Some(d) if d.is_unique_violation() => TxError::Conflict(format!(
                "another writer got there first ({})",
                d.constraint().unwrap_or("unique constraint")
            )),
            _ => TxError::Store(backend(e)),
        }
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

/// A state update written for one row must have moved exactly that row.
fn moved_one(rows: u64, kid: &Kid, otherwise: &str) -> Result<(), TxError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(TxError::Conflict(format!("{kid} {otherwise}")))
    }
}

fn done(activated: Option<Kid>, deactivated: Option<Kid>) -> Applied {
    Applied::Done {
        activated,
        deactivated,
    }
}

impl<D> SqlStore<D>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::DB>,
    <D::DB as Database>::Arguments: sqlx::IntoArguments<D::DB>,
    KeyRow: Fetch<D::DB>,
    (String, String): Fetch<D::DB>,
    (Option<i64>,): Fetch<D::DB>,
    &'static str: Bind<D::DB>,
    String: Bind<D::DB>,
    Option<Vec<u8>>: Bind<D::DB>,
    Option<String>: Bind<D::DB>,
    i64: Bind<D::DB>,
    Option<i64>: Bind<D::DB>,
    bool: Bind<D::DB>,
{
    /// Applies `change` in one transaction: committed when done, rolled
    /// back when stale or failed.
    pub(super) async fn apply_change(&self, change: &Change) -> Result<Applied, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = match Self::apply_in(&mut tx, change).await {
            Ok(applied @ Applied::Done { .. }) => {
                tx.commit().await.map_err(backend)?;
                self.committed(change).await;
                return Ok(applied);
            }
            Ok(stale) => Ok(stale),
            Err(TxError::Conflict(reason)) => Ok(Applied::Stale(reason)),
            Err(TxError::Store(e)) => Err(e),
        };
        // Nothing of the change is kept either way: a rollback fails only
        // when the connection is gone, which rolls back just the same, so
        // the answer stands.
        let _ = tx.rollback().await;
        outcome
    }

    /// The change's rules, then, if it is done, the revision bump and the
    /// in-transaction announcement.
    async fn apply_in(conn: &mut Conn<D>, change: &Change) -> Result<Applied, TxError> {
        let applied = Self::rules(conn, change).await?;
        if matches!(applied, Applied::Done { .. }) {
            sqlx::query(
                "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) \
                 WHERE name = 'revision'",
            )
            .execute(&mut *conn)
            .await?;
            if let Publish::InTransaction(publish) = D::PUBLISH {
                sqlx::query(publish).execute(&mut *conn).await?;
            }
        }
        Ok(applied)
    }

    /// The precondition checks and writes of one change.
    async fn rules(conn: &mut Conn<D>, change: &Change) -> Result<Applied, TxError> {
        match change {
            Change::Insert(key) => Self::insert(conn, key).await,
            Change::Activate {
                set,
                alg,
                kid,
                at,
                retire_at,
                emergency,
            } => {
                Self::lock_set_alg(conn, set.as_str(), alg.as_str()).await?;
                let Some(pending) = Self::key_by_kid(conn, kid).await? else {
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
                let old = Self::key_in_state(conn, set, *alg, KeyState::Active).await?;
                if let Some(old) = &old {
                    Self::deactivate(conn, &old.kid, *at, *retire_at).await?;
                }
                Self::activate(conn, kid, *at, *emergency).await?;
                Ok(done(Some(kid.clone()), old.map(|k| k.kid)))
            }
            Change::Retire { kid, at } => {
                Self::lock_kid(conn, kid).await?;
                let res = sqlx::query(
                    "UPDATE keys SET state = 'retired' \
                     WHERE kid = $1 AND state = 'retiring' AND retire_at <= $2",
                )
                .bind(kid.to_string())
                .bind(ts(*at))
                .execute(&mut *conn)
                .await?;
                if res.rows_affected() == 0 {
                    return Ok(Applied::Stale(format!("{kid} is not retiring or not due")));
                }
                Ok(done(None, None))
            }
            Change::Revoke { kid, at } => {
                Self::lock_kid(conn, kid).await?;
                let Some(key) = Self::key_by_kid(conn, kid).await? else {
                    return Err(StoreError::UnknownKid(kid.to_string()).into());
                };
                if !key.state.is_published() {
                    return Ok(Applied::Stale(format!("{kid} is already {}", key.state)));
                }
                let res = sqlx::query(
                    "UPDATE keys SET state = 'revoked', sealed_private = NULL, backend_ref = NULL, \
                     deactivate_at = CASE WHEN state = 'active' THEN $1 ELSE deactivate_at END, \
                     retire_at = $1 WHERE kid = $2 AND state = $3",
                )
                .bind(ts(*at))
                .bind(kid.to_string())
                .bind(key.state.as_str())
                .execute(&mut *conn)
                .await?;
                moved_one(
                    res.rows_affected(),
                    kid,
                    &format!("is no longer {}", key.state),
                )?;
                let was_active = key.state == KeyState::Active;
                let mut activated = None;
                if was_active
                    && let Some(next) =
                        Self::key_in_state(conn, &key.set, key.alg, KeyState::Pending).await?
                {
                    Self::activate(conn, &next.kid, *at, true).await?;
                    activated = Some(next.kid);
                }
                Ok(done(activated, was_active.then(|| kid.clone())))
            }
            Change::Reschedule { kid, activate_at } => {
                // Under the lock, so a concurrent Activate either sees the
                // new time or has already made the key active (and this is
                // Stale).
                Self::lock_kid(conn, kid).await?;
                let res = sqlx::query(
                    "UPDATE keys SET activate_at = $1 WHERE kid = $2 AND state = 'pending'",
                )
                .bind(ts(*activate_at))
                .bind(kid.to_string())
                .execute(&mut *conn)
                .await?;
                if res.rows_affected() == 0 {
                    return Ok(Applied::Stale(format!("{kid} is not pending")));
                }
                Ok(done(None, None))
            }
        }
    }

    /// A freshly generated key: the next version, and the only pending (or
    /// active) key of its (set, alg).
    async fn insert(conn: &mut Conn<D>, key: &StoredKey) -> Result<Applied, TxError> {
        Self::lock_set_alg(conn, key.set.as_str(), key.alg.as_str()).await?;
        let max: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM keys WHERE set_name = $1 AND alg = $2")
                .bind(key.set.to_string())
                .bind(key.alg.as_str())
                .fetch_one(&mut *conn)
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
        if let Some(other) = Self::key_in_state(conn, &key.set, key.alg, key.state).await? {
            return Ok(Applied::Stale(format!(
                "{} is already {} for {}/{}",
                other.kid, key.state, key.set, key.alg
            )));
        }
        // A kid that already exists (kids are never reused, rule 5) hits
        // the primary key: a lost race, Stale like every unique violation.
        let res = sqlx::query(AssertSqlSafe(insert_sql("keys", KEY_COLUMNS, 1)))
            .bind(key.kid.to_string())
            .bind(key.set.to_string())
            .bind(key.alg.as_str())
            .bind(i64::from(key.version))
            .bind(key.state.as_str())
            .bind(&key.public_jwk)
            .bind(key.sealed_private.clone())
            .bind(ts(key.created_at))
            .bind(ts(key.publish_at))
            .bind(key.activate_at.map(ts))
            .bind(key.deactivate_at.map(ts))
            .bind(key.retire_at.map(ts))
            .bind(key.emergency)
            .bind(key.backend.clone())
            .bind(key.backend_ref.clone())
            .execute(&mut *conn)
            .await?;
        moved_one(res.rows_affected(), &key.kid, "was not inserted")?;
        let activated = (key.state == KeyState::Active).then(|| key.kid.clone());
        Ok(done(activated, None))
    }

    /// Active -> retiring, private half erased.
    async fn deactivate(
        conn: &mut Conn<D>,
        kid: &Kid,
        at: DateTime<Utc>,
        retire_at: DateTime<Utc>,
    ) -> Result<(), TxError> {
        let res = sqlx::query(
            "UPDATE keys SET state = 'retiring', sealed_private = NULL, backend_ref = NULL, \
             deactivate_at = $1, \
             retire_at = $2 WHERE kid = $3 AND state = 'active'",
        )
        .bind(ts(at))
        .bind(ts(retire_at))
        .bind(kid.to_string())
        .execute(&mut *conn)
        .await?;
        moved_one(res.rows_affected(), kid, "is no longer active")
    }

    /// Pending -> active.
    async fn activate(
        conn: &mut Conn<D>,
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
        .bind(kid.to_string())
        .execute(&mut *conn)
        .await?;
        moved_one(res.rows_affected(), kid, "is no longer pending")
    }

    /// Serializes every change to one (set, alg) until the transaction
    /// ends, where the dialect needs it.
    async fn lock_set_alg(conn: &mut Conn<D>, set: &str, alg: &str) -> Result<(), TxError> {
        if let Some(lock) = D::LOCK_SET_ALG {
            sqlx::query(lock)
                .bind(set.to_owned())
                .bind(alg.to_owned())
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Takes the (set, alg) lock of `kid`, if it exists. A key's set and
    /// alg never change, so reading them before the lock is safe; its state
    /// is only trusted from a read after it.
    async fn lock_kid(conn: &mut Conn<D>, kid: &Kid) -> Result<(), TxError> {
        if D::LOCK_SET_ALG.is_none() {
            return Ok(());
        }
        let owner: Option<(String, String)> =
            sqlx::query_as("SELECT set_name, alg FROM keys WHERE kid = $1")
                .bind(kid.to_string())
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((set, alg)) = owner {
            Self::lock_set_alg(conn, &set, &alg).await?;
        }
        Ok(())
    }

    async fn key_by_kid(conn: &mut Conn<D>, kid: &Kid) -> Result<Option<StoredKey>, TxError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE kid = $1");
        let row: Option<KeyRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(kid.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.map(key_from_row).transpose()?)
    }

    async fn key_in_state(
        conn: &mut Conn<D>,
        set: &SetName,
        alg: Alg,
        state: KeyState,
    ) -> Result<Option<StoredKey>, TxError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE set_name = $1 AND alg = $2 AND state = $3"
        );
        let row: Option<KeyRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(set.to_string())
            .bind(alg.as_str())
            .bind(state.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.map(key_from_row).transpose()?)
    }
}
