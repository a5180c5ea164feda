//! The audit writer: one task that appends entries to the store's chain in
//! batches (group commit). A caller waits until its own entry is committed,
//! so no signature is handed out without its record, while one transaction
//! carries many concurrent requests' records.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditEntry;
use crate::store::Store;

/// Upper bound of entries per transaction.
const MAX_BATCH: usize = 512;
/// Entries waiting for the writer; senders wait (back-pressure) when full.
const QUEUE: usize = 4096;

/// Why an entry could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The store refused the batch; the detail is for the daemon's log only.
    #[error("the audit trail could not be written: {0}")]
    Store(String),
    /// The writer has stopped (daemon shutting down).
    #[error("the audit writer has stopped")]
    Stopped,
}

type Job = (AuditEntry, oneshot::Sender<Result<(), AuditError>>);

/// A handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Job>,
}

impl Auditor {
    /// Starts the writer task on the current runtime. It ends when every
    /// `Auditor` clone is dropped, after writing what was queued.
    pub fn start(store: Arc<dyn Store>) -> (Auditor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(store, rx));
        (Auditor { tx }, task)
    }

    /// Appends `entry` and waits until it is committed.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entry, done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }
}

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let entries: Vec<AuditEntry> = batch.iter().map(|(e, _)| e.clone()).collect();
        let result = store
            .append_audit(&entries)
            .await
            .map(|_| ())
            .map_err(|e| AuditError::Store(e.to_string()));
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = entries.len(), "audit batch not written");
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}
