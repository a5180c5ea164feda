//! The audit writer: one task that appends entries to the store's chain in
//! batches (group commit). A caller waits until its own entry is durable, so
//! no signature is handed out without its record, while one transaction
//! carries many concurrent requests' records.
//!
//! When the store does not answer (PostgreSQL restarting, a network cut),
//! entries go to a local spool file (JSON lines, fsynced) instead, so that
//! signing goes on; the spool is replayed into the chain, in order and before
//! anything newer, as soon as the store answers again. Only when neither the
//! store nor the spool can take an entry is the request refused.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditEntry;
use crate::store::Store;

/// Upper bound of entries per transaction.
const MAX_BATCH: usize = 512;
/// Entries waiting for the writer; senders wait (back-pressure) when full.
const QUEUE: usize = 4096;
/// How often a non-empty spool is retried while no new entry arrives.
const REPLAY_EVERY: Duration = Duration::from_secs(2);

/// Why an entry could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Neither the store nor the spool took the entry; details are in the log.
    #[error("the audit trail could not be written: {0}")]
    Store(String),
    /// The writer has stopped (daemon shutting down).
    #[error("the audit writer has stopped")]
    Stopped,
}

type Job = (AuditEntry, oneshot::Sender<Result<(), AuditError>>);

/// What the writer measures: each signature waits for one batch's write,
/// so these two explain the signing latency an operator sees.
#[derive(Clone)]
pub struct AuditMetrics {
    /// Time to make one batch durable (store transaction, or spool fsync).
    pub write_seconds: Histogram,
    /// Entries per batch (how many requests shared one fsync).
    pub batch_entries: Histogram,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics {
            write_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        }
    }
}

/// What this process knows of the chain's end: the newest record it wrote
/// (seq, hash), and whether it ever saw the chain shrink under it.
#[derive(Debug, Default)]
pub struct HeadState {
    pub newest: Option<(i64, String)>,
    pub cut: Option<String>,
}

type Head = Arc<std::sync::Mutex<HeadState>>;

/// A handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Job>,
    head: Head,
}

impl Auditor {
    /// Starts the writer task on the current runtime. `spool` is the file
    /// used while the store is down (`None`: no spool, refuse instead). The
    /// task ends when every `Auditor` clone is dropped, after writing what
    /// was queued.
    pub fn start(
        store: Arc<dyn Store>,
        spool: Option<PathBuf>,
        metrics: AuditMetrics,
    ) -> (Auditor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let head: Head = Arc::default();
        let task = tokio::spawn(write_loop(
            store,
            Spool { path: spool },
            rx,
            head.clone(),
            metrics,
        ));
        (Auditor { tx, head }, task)
    }

    /// The newest record this process wrote, if any: a chain in the store
    /// that ends before it was cut at the end, which hashes alone cannot
    /// show.
    pub fn head(&self) -> (Option<(i64, String)>, Option<String>) {
        let h = self.head.lock().unwrap_or_else(|p| p.into_inner());
        (h.newest.clone(), h.cut.clone())
    }

    /// Appends `entry` and waits until it is durable (in the store, or in
    /// the spool while the store is down).
    pub async fn record(&self, entry: AuditEntry) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entry, done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }
}

/// The local overflow file.
struct Spool {
    path: Option<PathBuf>,
}

impl Spool {
    fn pending(&self) -> bool {
        self.path
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() > 0)
    }

    fn append(&self, entries: &[AuditEntry]) -> Result<(), String> {
        let path = self.path.as_deref().ok_or("no spool configured")?;
        let mut buf = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut buf, e).map_err(|e| e.to_string())?;
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(&buf)
            .and_then(|_| f.sync_data())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn read(path: &Path) -> Result<Vec<AuditEntry>, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = Vec::new();
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| e.to_string())?;
            if line.trim().is_empty() {
                continue;
            }
            // A line torn by a crash mid-write is the only thing that can be
            // unreadable; it was never acknowledged, so it is skipped.
            match serde_json::from_str(&line) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(error = %e, "skipping a torn audit spool line"),
            }
        }
        Ok(out)
    }

    /// Moves the spool into the store; true when it is empty afterwards.
    async fn replay(&self, store: &dyn Store) -> bool {
        let Some(path) = self.path.as_deref() else {
            return true;
        };
        if !self.pending() {
            return true;
        }
        let entries = match Self::read(path) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit spool");
                return false;
            }
        };
        match store.append_audit(&entries).await {
            Ok(_) => {
                if let Err(e) = std::fs::remove_file(path) {
                    // The entries are in the store; a leftover spool would
                    // be replayed twice, so say so loudly.
                    tracing::error!(error = %e, path = %path.display(), "audit spool replayed but not removed");
                }
                tracing::info!(
                    entries = entries.len(),
                    "audit spool replayed into the store"
                );
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "store still down; audit spool kept");
                false
            }
        }
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    spool: Spool,
    mut rx: mpsc::Receiver<Job>,
    head: Head,
    metrics: AuditMetrics,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // After a failed write the store is not tried again on the request path
    // until this instant: a locked SQLite file fails only after its busy
    // timeout (10 s), and every batch waiting that long would stall signing.
    let mut store_down_until: Option<std::time::Instant> = None;
    let retry_later = || Some(std::time::Instant::now() + REPLAY_EVERY);
    loop {
        let received = if spool.pending() {
            match tokio::time::timeout(REPLAY_EVERY, rx.recv_many(&mut batch, MAX_BATCH)).await {
                Ok(n) => n,
                Err(_) => {
                    store_down_until = if spool.replay(store.as_ref()).await {
                        None
                    } else {
                        retry_later()
                    };
                    continue;
                }
            }
        } else {
            rx.recv_many(&mut batch, MAX_BATCH).await
        };
        if received == 0 {
            break;
        }
        let started = std::time::Instant::now();
        let (entries, waiters): (Vec<AuditEntry>, Vec<_>) = batch.drain(..).unzip();
        // Older spooled entries go first, or the chain would be out of order.
        let result = if store_down_until.is_some_and(|t| std::time::Instant::now() < t) {
            spool_or_fail(&spool, &entries, "store down, retried every 2 s")
        } else if spool.replay(store.as_ref()).await {
            match store.append_audit(&entries).await {
                Ok(records) => {
                    store_down_until = None;
                    let mut h = head.lock().unwrap_or_else(|p| p.into_inner());
                    // Sequence numbers only grow (replicas included): a new
                    // record at or below one we wrote means records were
                    // deleted from the end of the chain.
                    if let (Some((seq, _)), Some(first)) = (&h.newest, records.first())
                        && first.seq <= *seq
                        && h.cut.is_none()
                    {
                        let msg = format!(
                            "audit record {seq} was written by this daemon, but the chain continued at {}: the newest records were deleted",
                            first.seq
                        );
                        tracing::error!("{msg}");
                        h.cut = Some(msg);
                    }
                    if let Some(last) = records.last() {
                        h.newest = Some((last.seq, last.hash.clone()));
                    }
                    Ok(())
                }
                Err(e) => {
                    store_down_until = retry_later();
                    spool_or_fail(&spool, &entries, &e.to_string())
                }
            }
        } else {
            store_down_until = retry_later();
            spool_or_fail(&spool, &entries, "store down, older entries still spooled")
        };
        metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_entries.observe(entries.len() as f64);
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }
    spool.replay(store.as_ref()).await;
}

fn spool_or_fail(spool: &Spool, entries: &[AuditEntry], why: &str) -> Result<(), AuditError> {
    match spool.append(entries) {
        Ok(()) => {
            tracing::warn!(entries = entries.len(), reason = %why, "audit entries spooled locally until the store answers");
            Ok(())
        }
        Err(spool_err) => {
            tracing::error!(reason = %why, spool = %spool_err, entries = entries.len(), "audit entries could not be written anywhere");
            Err(AuditError::Store(format!("{why}; spool: {spool_err}")))
        }
    }
}
