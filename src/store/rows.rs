//! How a key and an audit record sit in a row, the same on every database:
//! the column lists, the row tuples in column order, the one conversion
//! each way, and the statement texts that both audit writers (the pool and
//! SQLite's appender thread) share. Callers above the store see only the
//! domain types ([`StoredKey`], [`AuditRecord`]); nothing here runs a query.
//!
//! Times are unix seconds in an integer column on both databases.
//! `emergency` is `INTEGER` 0/1 on SQLite and `BOOLEAN` on PostgreSQL: sqlx
//! binds a Rust `bool` as an integer on SQLite and decodes an integer column
//! into one, so one tuple type serves both and the stored form (and the
//! migrations) stay as they were.

use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::api::StoreError;
use crate::audit::chain::{AuditEntry, AuditRecord};
use crate::lifecycle::model::StoredKey;
use crate::types::{Alg, KeyState, Kid, SetName};

/// The `keys` columns, in [`KeyRow`] order.
pub(super) const KEY_COLUMNS: &str = "kid, set_name, alg, version, state, public_jwk, sealed_private, \
     created_at, publish_at, activate_at, deactivate_at, retire_at, emergency, backend, backend_ref";

/// The `audit` columns, in [`AuditRow`] and [`audit_values`] order.
pub(super) const AUDIT_COLUMNS: &str = "seq, at, action, outcome, uid, gid, pid, exe, client_id, audience, kid, jti, detail, prev_hash, hash, chain_key";

/// The chain's newest record (seq, hash), read under the append lock
/// before a batch is appended.
pub(super) const AUDIT_TAIL: &str = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1";

/// A `keys` row as read, in [`KEY_COLUMNS`] order.
pub(super) type KeyRow = (
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<Vec<u8>>,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    bool,
    String,
    Option<String>,
);

/// An `audit` row as read, in [`AUDIT_COLUMNS`] order.
pub(super) type AuditRow = (
    i64,
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    Option<String>,
);

/// An audit record's values as written, in [`AUDIT_COLUMNS`] order.
/// Borrowed, so the appender thread binds them without copying; `&String`
/// rather than `&str` because sqlx encodes a reference to any type it
/// encodes, which a store generic over the database can name.
pub(super) type AuditValues<'a> = (
    i64,
    i64,
    &'a String,
    &'a String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<&'a String>,
    Option<&'a String>,
    Option<&'a String>,
    Option<&'a String>,
    Option<&'a String>,
    Option<&'a String>,
    &'a String,
    &'a String,
    Option<&'a String>,
);

/// `INSERT INTO table (columns) VALUES ($1, ...), ...` for `rows` rows.
/// Numbered parameters, which sqlx (on both databases) and rusqlite all
/// accept, so one text serves every writer.
pub(super) fn insert_sql(table: &str, columns: &str, rows: usize) -> String {
    let width = columns.split(',').count();
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=width)
                .map(|i| format!("${}", row * width + i))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {table} ({columns}) VALUES {}",
        values.join(", ")
    )
}

/// Unix seconds, as stored.
pub(super) fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn from_ts(secs: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {secs} out of range")))
}

fn opt_ts(secs: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    secs.map(from_ts).transpose()
}

/// Reads a key back, refusing values no writer could have stored.
pub(super) fn key_from_row(row: KeyRow) -> Result<StoredKey, StoreError> {
    let corrupt = |e: crate::types::TypeError| StoreError::Corrupt(e.to_string());
    Ok(StoredKey {
        kid: Kid::from_stored(row.0),
        set: SetName::new(&row.1).map_err(corrupt)?,
        alg: Alg::from_str(&row.2).map_err(corrupt)?,
        version: u32::try_from(row.3)
            .map_err(|_| StoreError::Corrupt("version out of range".into()))?,
        state: KeyState::from_str(&row.4).map_err(corrupt)?,
        public_jwk: row.5,
        sealed_private: row.6,
        created_at: from_ts(row.7)?,
        publish_at: from_ts(row.8)?,
        activate_at: opt_ts(row.9)?,
        deactivate_at: opt_ts(row.10)?,
        retire_at: opt_ts(row.11)?,
        emergency: row.12,
        backend: row.13,
        backend_ref: row.14,
    })
}

/// Reads an audit record back, refusing ids out of their types' range.
pub(super) fn audit_from_row(row: AuditRow) -> Result<AuditRecord, StoreError> {
    fn narrow<T: TryFrom<i64>>(v: Option<i64>, name: &str) -> Result<Option<T>, StoreError> {
        v.map(|v| T::try_from(v).map_err(|_| StoreError::Corrupt(format!("{name} out of range"))))
            .transpose()
    }
    Ok(AuditRecord {
        seq: row.0,
        entry: AuditEntry {
            at: row.1,
            action: row.2,
            outcome: row.3,
            uid: narrow(row.4, "uid")?,
            gid: narrow(row.5, "gid")?,
            pid: narrow(row.6, "pid")?,
            exe: row.7,
            client_id: row.8,
            audience: row.9,
            kid: row.10,
            jti: row.11,
            detail: row.12,
        },
        prev_hash: row.13,
        hash: row.14,
        key: row.15,
    })
}

/// The values every audit writer binds for `r`, in [`AUDIT_COLUMNS`] order.
pub(super) fn audit_values(r: &AuditRecord) -> AuditValues<'_> {
    let e = &r.entry;
    (
        r.seq,
        e.at,
        &e.action,
        &e.outcome,
        e.uid.map(i64::from),
        e.gid.map(i64::from),
        e.pid.map(i64::from),
        e.exe.as_ref(),
        e.client_id.as_ref(),
        e.audience.as_ref(),
        e.kid.as_ref(),
        e.jti.as_ref(),
        e.detail.as_ref(),
        &r.prev_hash,
        &r.hash,
        r.key.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_value_of_every_row() {
        assert_eq!(
            insert_sql("t", "a, b", 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            insert_sql("audit", AUDIT_COLUMNS, 1).matches('$').count(),
            16
        );
    }
}
