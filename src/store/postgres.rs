//! The shared store: PostgreSQL, for several replicas on one database, and
//! PostgreSQL's [`Dialect`]. The rules are the shared ones (`sql.rs`,
//! `transitions.rs`, the conformance suite in `tests/store_conformance.rs`
//! runs them against both databases); this file owns the connection, the
//! listener, and how writers that are separate processes are kept apart:
//!
//! - Every [`Change`](crate::lifecycle::model::Change) first takes a
//!   transaction-scoped advisory lock on its (set, alg)
//!   (`pg_advisory_xact_lock("jwks", hashtext(set/alg))`), so the
//!   precondition re-check and the write of two replicas cannot interleave;
//!   under READ COMMITTED every statement after the lock sees everything
//!   committed before it was granted. A plain `BEGIN` is enough around it.
//! - The audit append (and pruning) takes `LOCK TABLE audit IN EXCLUSIVE
//!   MODE` (readers go on; writers queue), so two appenders can never chain
//!   to the same record.
//! - A re-seal takes `LOCK TABLE keys IN EXCLUSIVE MODE` and the
//!   fingerprint's row, so no key change or other re-seal runs meanwhile.
//! - Each committed key change runs `pg_notify('jwksd_keys', <revision>)`
//!   inside its transaction; a background task `LISTEN`s on a dedicated
//!   connection and signals [`Store::changes`](super::api::Store::changes).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Notify;

use super::api::StoreError;
use super::dialect::{Dialect, Publish};
use super::sql::{SqlStore, backend};

/// A PostgreSQL-backed [`Store`](super::api::Store). Dropping the last clone
/// stops its listener task.
pub type PostgresStore = SqlStore<PostgresDialect>;

/// The channel every committed key change notifies.
pub const CHANGES_CHANNEL: &str = "jwksd_keys";

/// PostgreSQL's spelling of what differs, and its listener task.
#[derive(Debug, Clone)]
pub struct PostgresDialect {
    _listener: Arc<AbortOnDrop>,
}

impl Dialect for PostgresDialect {
    type DB = Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const NOW_MS: &'static str = "(extract(epoch from now()) * 1000)::bigint";
    /// 1786211187 is "jwks" in ASCII (0x6a776b73): the first key of the
    /// two-int advisory lock space, so these locks cannot collide with
    /// sqlx's migration lock (one-bigint space) or another application's.
    const LOCK_SET_ALG: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(1786211187, hashtext($1 || '/' || $2))");
    const LOCK_AUDIT: Option<&'static str> = Some("LOCK TABLE audit IN EXCLUSIVE MODE");
    const LOCK_KEYS: &'static [&'static str] = &[
        "LOCK TABLE keys IN EXCLUSIVE MODE",
        "SELECT 1 FROM meta WHERE name = 'master_key_fingerprint' FOR UPDATE",
    ];
    const PUBLISH: Publish = Publish::InTransaction(
        "SELECT pg_notify('jwksd_keys', value) FROM meta WHERE name = 'revision'",
    );
}

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

/// The migrations, compiled into the binary.
const MIGRATIONS: [&str; 5] = [
    include_str!("../../migrations/postgres/0001_keys_and_audit.sql"),
    include_str!("../../migrations/postgres/0002_lease.sql"),
    include_str!("../../migrations/postgres/0003_live_keys.sql"),
    include_str!("../../migrations/postgres/0004_keyed_audit_chain.sql"),
    include_str!("../../migrations/postgres/0005_key_backends.sql"),
];

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host/db?sslmode=verify-full`,
    /// every libpq-style parameter sqlx understands), applies pending
    /// migrations (serialized across replicas by sqlx's migration lock) and
    /// starts listening for other writers' changes.
    ///
    /// Errors: [`StoreError::Backend`] when the database does not answer
    /// within 5 s or refuses the connection; [`StoreError::Migrate`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // Error texts never include the URL: it may hold a password. The
        // config load applied the TLS rule already; applying it again here
        // covers every other way in (the environment may have changed, a
        // caller may build the URL itself).
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("jwksd");
        crate::config::pg_tls::check_options(&options)
            .map_err(|e| StoreError::Backend(format!("store.url refused: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        super::migrations::migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        // The first LISTEN happens before `open` returns, so a change
        // committed by anyone after `open` is never missed.
        let listener = listen(&options).await.map_err(backend)?;
        let changes = Arc::new(Notify::new());
        let task = tokio::spawn(listen_loop(options, listener, changes.clone()));
        let dialect = PostgresDialect {
            _listener: Arc::new(AbortOnDrop(task)),
        };
        Ok(PostgresStore::new(pool, changes, dialect))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_and_notify_statements_spell_the_named_constants() {
        let lock = PostgresDialect::LOCK_SET_ALG.unwrap();
        let jwks = i32::from_be_bytes(*b"jwks");
        assert!(lock.contains(&format!("({jwks},")), "{lock}");
        let Publish::InTransaction(publish) = PostgresDialect::PUBLISH else {
            panic!("PostgreSQL announces changes inside the transaction");
        };
        assert!(
            publish.contains(&format!("'{CHANGES_CHANNEL}'")),
            "{publish}"
        );
    }
}
