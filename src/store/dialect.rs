//! What differs between the databases, and nothing else: the few statements
//! that have no common spelling, and the work one database needs around a
//! commit. Every rule (preconditions, row counts, conflicts, the audit
//! chain, the lease) is written once above this, in `sql.rs` and
//! `transitions.rs`, with SQL that both databases accept (numbered `$N`
//! parameters: sqlx's SQLite driver reads them as positions too).
//!
//! Statements are constants rather than methods so that a reader sees at a
//! glance what each database runs, and so that the rules, not a dialect,
//! decide when they run.

use std::fmt::Debug;
use std::future::Future;

use super::sqlite_audit::AuditAppender;

/// One database's spelling of the statements that differ.
pub trait Dialect: Clone + Debug + Send + Sync + 'static {
    /// The sqlx driver.
    type DB: sqlx::Database<QueryResult: RowsAffected>;

    /// Begins a transaction that will write. It must keep other writers
    /// from overtaking it between a precondition's read and its write,
    /// either by itself (SQLite `BEGIN IMMEDIATE` takes the database's write
    /// lock up front) or together with [`LOCK_SET_ALG`](Dialect::LOCK_SET_ALG).
    const BEGIN_WRITE: &'static str;

    /// The database clock in unix milliseconds, as an SQL expression: the
    /// lease compares expiries on the database's clock only.
    const NOW_MS: &'static str;

    /// Serializes every change to one (set, alg) until the transaction ends
    /// (binds: set, alg). `None` where [`BEGIN_WRITE`](Dialect::BEGIN_WRITE)
    /// already serializes all writers.
    const LOCK_SET_ALG: Option<&'static str>;

    /// Makes this transaction the only audit appender (or pruner) until it
    /// ends, so the chain's tail it reads is the true one. `None` where
    /// [`BEGIN_WRITE`](Dialect::BEGIN_WRITE) already does.
    const LOCK_AUDIT: Option<&'static str>;

    /// Keeps every key change out of a re-seal's transaction.
    const LOCK_KEYS: &'static [&'static str];

    /// How a committed key change reaches the store's
    /// [`changes`](super::api::Store::changes) handles.
    const PUBLISH: Publish;

    /// The dialect's own audit append path, if it has one; otherwise the
    /// store appends through its pool.
    fn audit_appender(&self) -> Option<&AuditAppender> {
        None
    }

    /// Runs after a commit that erased private halves (a key left `active`,
    /// a revocation, a re-seal), for copies the database may keep elsewhere.
    fn after_erasure(pool: &sqlx::Pool<Self::DB>) -> impl Future<Output = ()> + Send {
        let _ = pool;
        async {}
    }
}

/// How many rows a statement wrote: every driver tells, but through its
/// own result type.
pub trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::postgres::PgQueryResult::rows_affected(self)
    }
}

/// How a committed key change is announced.
#[derive(Debug, Clone, Copy)]
pub enum Publish {
    /// A statement run inside the change's transaction, after the revision
    /// bump (binds nothing): the database delivers it to every listener,
    /// in every process, on commit only.
    InTransaction(&'static str),
    /// This process's own `Notify`, after the commit (a database that one
    /// process serves).
    AfterCommit,
}
