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

pub mod api;
mod dialect;
mod migrations;
mod open;
mod postgres;
mod rows;
mod sql;
mod sqlite;
mod sqlite_audit;
mod transitions;

pub use api::{LIFECYCLE_LEASE, Store, StoreError};
pub use open::{open, open_read_only};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
