//! The SQLite audit appender: one thread that owns its own connection to
//! the database file and appends audit batches to the chain.
//!
//! Why not the sqlx pool: every signature waits for its batch to be durable,
//! so the batch's fixed cost is on every signature's latency. Through sqlx a
//! batch was five hand-offs to its per-connection worker thread and back
//! (acquire, `BEGIN IMMEDIATE`, the chain's tail, the insert, `COMMIT`);
//! here it is one hand-off, and the statements run back to back on the
//! thread that owns the connection (BENCHMARKS.md, "the SQLite audit
//! appender", has the before and after).
//!
//! Checkpoints stay SQLite's own: the commit that takes the WAL past 1,000
//! pages also copies it into the main file, so that one batch (every few
//! seconds under load) waits for the copy and its fsync. Moving that past
//! the batch's answer (a WAL hook, then a checkpoint after `done.send`)
//! would spare that batch only; the next ones would still queue behind it.
//! A checkpointer thread beside it was measured and dropped (same section):
//! under steady signing a `PASSIVE` checkpoint never catches up with the
//! appender, so the WAL is never started over, and a `RESTART` checkpoint
//! to bound it stalls the batches behind it.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::api::StoreError;
use super::rows::{AUDIT_COLUMNS, AUDIT_TAIL, audit_values, insert_sql};
use crate::audit::chain::{self as audit, AuditEntry, AuditRecord};
use crate::audit::key::AuditKey;

type Job = (
    Vec<AuditEntry>,
    Arc<AuditKey>,
    oneshot::Sender<Result<Vec<AuditRecord>, StoreError>>,
);

/// A handle to the appender thread. It ends, and closes its connection,
/// when the handle is dropped.
#[derive(Debug)]
pub struct AuditAppender {
    jobs: mpsc::Sender<Job>,
}

impl AuditAppender {
    /// Starts the thread on the database at `path` (which the pool has
    /// already created and migrated). Opening happens on the thread, and
    /// again after a failure, so a file that is briefly unavailable only
    /// fails the batches of that moment.
    pub(super) fn start(path: &Path) -> Result<AuditAppender, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("jwksd-audit".to_owned())
            .spawn(move || append_loop(&path, &rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the audit thread: {e}")))?;
        Ok(AuditAppender { jobs })
    }

    /// Appends `entries` to the chain, MAC'd under `key`, in one durable
    /// transaction.
    pub(super) async fn append(
        &self,
        key: &Arc<AuditKey>,
        entries: &[AuditEntry],
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send((entries.to_vec(), key.clone(), done))
            .map_err(|_| StoreError::Backend("the audit appender thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the audit appender thread has stopped".into()))?
    }
}

/// Opens the database file for the appender.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Same durability as the pool's connections: a batch is acknowledged
    // (and its signatures handed out) only once its commit is on disk.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_handler(Some(retry_soon))?;
    Ok(conn)
}

/// Busy handler: retry every 100 µs for the first tenth of a second, then
/// every 10 ms, for about 10 s in all (the pool's busy timeout). SQLite's
/// own timeout sleeps 1, 2, 5, 10 ... up to 100 ms between tries, so a lock
/// held for a millisecond (a key change's commit) cost a waiting batch, and
/// every signature in it, tens of milliseconds.
///
/// The pool's writers keep SQLite's timeout (sqlx sets no other), so under
/// peak signing they take the lock in the gaps between batches, as they
/// did when the batches went through the pool; `keys rotate --now` under
/// peak signing still ends within a fraction of a second (BENCHMARKS.md).
fn retry_soon(attempt: i32) -> bool {
    const SHORT: i32 = 1_000;
    const LONG: i32 = 990;
    match attempt {
        a if a < SHORT => std::thread::sleep(Duration::from_micros(100)),
        a if a < SHORT + LONG => std::thread::sleep(Duration::from_millis(10)),
        _ => return false,
    }
    true
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Whether a failed batch says nothing against the connection itself: the
/// lock stayed taken past the busy handler. Any other failure (I/O error,
/// full disk, a file replaced under us) gets a fresh connection for the
/// next batch; opening one costs a fraction of a millisecond.
fn keeps_connection(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The appender thread: one batch at a time, in arrival order.
fn append_loop(path: &Path, jobs: &mpsc::Receiver<Job>) {
    let mut conn: Option<Connection> = None;
    while let Ok((entries, key, done)) = jobs.recv() {
        // A panic must not end the thread: every later batch would fail
        // until a restart. The connection it held is not reused.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut c = match conn.take() {
                Some(c) => c,
                None => connect(path)?,
            };
            let result = append(&mut c, &key, &entries);
            // A failed batch is rolled back when its transaction drops; the
            // connection is kept only when that left it outside a
            // transaction and the failure was the lock's, not its own.
            let reusable = match &result {
                Ok(_) => true,
                Err(e) => keeps_connection(e) && c.is_autocommit(),
            };
            if reusable {
                conn = Some(c);
            }
            result
        }));
        let result = match outcome {
            Ok(result) => result.map_err(backend),
            Err(_) => Err(StoreError::Backend(
                "the audit appender panicked; the batch was not written".into(),
            )),
        };
        // The waiter may have given up (daemon shutting down): the batch is
        // in the chain all the same.
        let _ = done.send(result);
    }
}

/// The pool path's statement text for one row: the same columns, values
/// and numbered parameters (rusqlite binds a tuple by position).
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql("audit", AUDIT_COLUMNS, 1));

/// One batch: the chain's tail is read inside the write transaction
/// (`BEGIN IMMEDIATE`), so no other writer can append between the read and
/// the insert.
fn append(
    conn: &mut Connection,
    key: &AuditKey,
    entries: &[AuditEntry],
) -> rusqlite::Result<Vec<AuditRecord>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last: Option<(i64, String)> = tx
        .query_row(AUDIT_TAIL, [], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let records = audit::chain_after(last, key, entries);
    {
        // In-process SQLite: one prepared single-row statement per record
        // costs microseconds, and keeps one statement text for every batch
        // size.
        let mut insert = tx.prepare_cached(&INSERT_ONE)?;
        for r in &records {
            insert.execute(audit_values(r))?;
        }
    }
    tx.commit()?;
    Ok(records)
}
