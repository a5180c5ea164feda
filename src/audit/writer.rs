//! The audit writer: one task that appends entries to the store's chain in
//! batches (group commit). A caller waits until its own entry is durable, so
//! no signature is handed out without its record, while one transaction
//! carries many concurrent requests' records.
//!
//! When the store does not answer (PostgreSQL restarting, a network cut),
//! entries go to a local spool file (JSON lines, fsynced) instead, so that
//! signing goes on; the spool is replayed into the chain, in order and before
//! anything newer, as soon as the store answers again. Only when neither the
//! store nor the spool can take an entry is the request refused. The records
//! of refused requests (`Auditor::record_refusals`) are spooled only while
//! the spool is smaller than its refusal room (`store.audit_spool_refusal_bytes`):
//! past it they are counted and left out, so that refusals never take the
//! room signatures need; one record says how many once the store answers.
//!
//! Group commit waits for siblings: while other signing requests are on a
//! CPU, about to hand in their entries, the writer gives them up to
//! `GATHER` to join the batch before it commits (PostgreSQL's
//! `commit_delay` with `commit_siblings`). A lone request never waits.
//!
//! An entry may also be handed in early, before the signature it records is
//! made (`Auditor::submit_early`, for RSA signatures: milliseconds of CPU,
//! after a wait in the signing queue). The writer holds such entries until
//! one of them is waited for, so one commit covers every signature queued
//! behind it, and the caller still gets its answer only once its record is
//! durable.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::audit::chain::AuditEntry;
use crate::audit::key::AuditKey;
use crate::store::api::Store;

/// Upper bound of entries per transaction.
const MAX_BATCH: usize = 512;
/// Entries waiting for the writer; senders wait (back-pressure) when full.
const QUEUE: usize = 4096;
/// How often a non-empty spool is retried while no new entry arrives.
const REPLAY_EVERY: Duration = Duration::from_secs(2);
/// Longest a batch waits for entries that are on their way.
///
/// Why wait at all: a batch's commit costs about the same CPU whatever its
/// size, and without waiting a batch holds only what arrived during the
/// previous commit. Waiting for the requests being signed makes batches
/// larger and throughput higher (BENCHMARKS.md, "group commit that waits
/// for requests being signed"). The wait ends as soon as no sibling is
/// left, so at moderate load it adds at most about one signature's time,
/// and reaches this bound only when the siblings never run out. tokio's
/// timer has millisecond resolution: such a batch commits 1-2 ms after its
/// first entry was taken.
const GATHER: Duration = Duration::from_millis(1);
/// Longest the writer holds early entries that nobody waits for yet. Only a
/// safety bound: every early entry is waited for, or its receipt dropped,
/// once its signature is done, which ends the hold at once.
const HOLD: Duration = Duration::from_secs(1);

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

/// An entry on its way to the chain, and who to tell once it is durable.
struct Job {
    entry: AuditEntry,
    done: oneshot::Sender<Result<(), AuditError>>,
    /// Handed in before its signature was made: set once someone waits for
    /// it (`Receipt`); `None` for an entry whose caller waits at once.
    early: Option<Arc<AtomicBool>>,
    /// The record of a refused request: left out of a spool that is past
    /// its refusal room.
    refusal: bool,
}

impl Job {
    /// Whether this job can wait: handed in early, and nobody waits for it.
    fn may_wait(&self) -> bool {
        self.early
            .as_ref()
            .is_some_and(|waited| !waited.load(Ordering::Acquire))
    }
}

/// What the writer measures: each signature waits for one batch's write,
/// so these two explain the signing latency an operator sees.
#[derive(Clone)]
pub struct AuditMetrics {
    /// Time to make one batch durable (store transaction, or spool fsync).
    pub write_seconds: Histogram,
    /// Entries per batch (how many requests shared one fsync).
    pub batch_entries: Histogram,
    /// Refusal records left out because the store was down and the spool
    /// past its refusal room.
    pub refusals_dropped: Counter,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics {
            write_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            refusals_dropped: Counter::default(),
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
    on_the_way: Arc<OnTheWay>,
    chain: Arc<ChainRules>,
}

/// What the chain is MAC'd with, and what `audit verify` needs besides the
/// stored records: the chain key, and whether retention may have pruned
/// the chain's start (an anchor is refused otherwise).
#[derive(Debug)]
pub struct ChainRules {
    pub key: Arc<AuditKey>,
    pub retention: bool,
}

/// The `Ticket`s that are out: entries on their way to the writer.
#[derive(Default)]
struct OnTheWay {
    count: AtomicUsize,
    /// Wakes a gathering writer when the last ticket leaves without an
    /// entry (dropped): nothing will arrive on the queue to wake it then.
    none_left: Notify,
    /// Wakes a writer holding early entries when one is waited for.
    waited_for: Notify,
}

impl OnTheWay {
    fn arrive(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// `wake`: whether to wake the writer if this was the last ticket. Not
    /// when the entry is about to be sent: its arrival wakes the writer,
    /// and a wake-up before it could close the batch without it.
    fn leave(&self, wake: bool) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 && wake {
            // A permit is kept when no writer waits yet, so a wake-up
            // between its check of the count and its wait is not lost.
            self.none_left.notify_one();
        }
    }

    fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }
}

/// A request that will hand in an audit entry soon (it is being checked
/// and signed on a runtime thread now): batches wait for it, up to
/// `GATHER`. Dropping it unused (a cancelled request) only ends the wait.
pub struct Ticket<'a> {
    auditor: &'a Auditor,
}

impl<'a> Ticket<'a> {
    /// Appends `entry` and waits until it is durable; see `Auditor::record`.
    pub async fn record(self, entry: AuditEntry) -> Result<(), AuditError> {
        self.hand_in().record(entry).await
    }

    /// Hands `entry` in before its signature is made; see
    /// `Auditor::submit_early`.
    pub async fn submit_early(self, entry: AuditEntry) -> Result<Receipt, AuditError> {
        self.hand_in().submit_early(entry).await
    }

    /// Takes this request off the count before its entry is sent: the batch
    /// that takes the entry must not wait for it, and the entry's arrival
    /// wakes the writer (a wake-up before it could close the batch without
    /// it).
    fn hand_in(self) -> &'a Auditor {
        let auditor = self.auditor;
        auditor.on_the_way.leave(false);
        std::mem::forget(self);
        auditor
    }
}

/// An early entry's claim: `durable` waits until the entry is in the chain.
/// Dropping it (a cancelled request) lets the writer commit the entry
/// without waiting for anyone else.
pub struct Receipt {
    committed: oneshot::Receiver<Result<(), AuditError>>,
    waited: Arc<AtomicBool>,
    on_the_way: Arc<OnTheWay>,
}

impl Receipt {
    /// Waits until the entry is durable. Under load it usually already is:
    /// a batch that was committed for an earlier signature carried it.
    pub async fn durable(mut self) -> Result<(), AuditError> {
        let done = match self.committed.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(AuditError::Stopped)),
            Err(oneshot::error::TryRecvError::Empty) => None,
        };
        if let Some(result) = done {
            // Nothing to wake the writer for: `drop` must not either, or
            // the next hold would wake up for nothing.
            self.waited.store(true, Ordering::Release);
            return result;
        }
        self.wait_for_it();
        (&mut self.committed)
            .await
            .map_err(|_| AuditError::Stopped)?
    }

    fn wait_for_it(&self) {
        if !self.waited.swap(true, Ordering::AcqRel) {
            // A permit is kept when the writer is not waiting yet: it looks
            // at the flags again before it waits.
            self.on_the_way.waited_for.notify_one();
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        self.wait_for_it();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.auditor.on_the_way.leave(true);
    }
}

impl Auditor {
    /// Starts the writer task on the current runtime. `spool` is the file
    /// used while the store is down (`None`: no spool, refuse instead);
    /// refusal records go there only while it is under `refusal_room`
    /// bytes. The task ends when every `Auditor` clone is dropped, after
    /// writing what was queued.
    pub fn start(
        store: Arc<dyn Store>,
        chain: ChainRules,
        spool: Option<PathBuf>,
        refusal_room: u64,
        metrics: AuditMetrics,
    ) -> (Auditor, tokio::task::JoinHandle<()>) {
        Self::start_waiting(store, chain, (spool, refusal_room), metrics, GATHER, HOLD)
    }

    /// `start`, with batches waiting up to `gather` for tickets and holding
    /// early entries up to `hold`.
    fn start_waiting(
        store: Arc<dyn Store>,
        chain: ChainRules,
        (spool, refusal_room): (Option<PathBuf>, u64),
        metrics: AuditMetrics,
        gather: Duration,
        hold: Duration,
    ) -> (Auditor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let head: Head = Arc::default();
        let on_the_way = Arc::new(OnTheWay::default());
        let chain = Arc::new(chain);
        let task = tokio::spawn(write_loop(
            Chained {
                store,
                key: chain.key.clone(),
            },
            Spool::open(spool, refusal_room),
            Incoming {
                rx,
                on_the_way: on_the_way.clone(),
                gather,
                hold,
            },
            head.clone(),
            metrics,
        ));
        (
            Auditor {
                tx,
                head,
                on_the_way,
                chain,
            },
            task,
        )
    }

    /// The chain's key and verification rules.
    pub fn chain(&self) -> &ChainRules {
        &self.chain
    }

    /// Says that this request will hand in an entry soon, so that batches
    /// wait for it; see `Ticket`.
    pub fn ticket(&self) -> Ticket<'_> {
        self.on_the_way.arrive();
        Ticket { auditor: self }
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
        let wait = self.enqueue(entry, false).await?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// Queues `entry` for the writer; the receiver says when it is durable.
    async fn enqueue(
        &self,
        entry: AuditEntry,
        refusal: bool,
    ) -> Result<oneshot::Receiver<Result<(), AuditError>>, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job {
                entry,
                done,
                early: None,
                refusal,
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        Ok(wait)
    }

    /// Appends the records of a refused request (and a summary before it,
    /// see `socket::refusals`) and waits until they are durable, or left
    /// out because the store is down and the spool past its refusal room.
    pub async fn record_refusals(&self, entries: Vec<AuditEntry>) -> Result<(), AuditError> {
        let mut waits = Vec::with_capacity(entries.len());
        for entry in entries {
            waits.push(self.enqueue(entry, true).await?);
        }
        for wait in waits {
            wait.await.map_err(|_| AuditError::Stopped)??;
        }
        Ok(())
    }

    /// Hands `entry` to the writer before the signature it records is made;
    /// `Receipt::durable` waits until it is in the chain. The writer holds
    /// early entries until one of them is waited for (or a later entry that
    /// cannot wait arrives), so one commit covers every signature queued
    /// meanwhile instead of one commit each.
    ///
    /// Why: recorded after its signature, each RSA entry arrived alone and
    /// paid a commit of its own (BENCHMARKS.md, "RS384 records go in before
    /// signing").
    pub async fn submit_early(&self, entry: AuditEntry) -> Result<Receipt, AuditError> {
        let (done, committed) = oneshot::channel();
        let waited = Arc::new(AtomicBool::new(false));
        self.tx
            .send(Job {
                entry,
                done,
                early: Some(waited.clone()),
                refusal: false,
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        Ok(Receipt {
            committed,
            waited,
            on_the_way: self.on_the_way.clone(),
        })
    }
}

/// The local overflow file.
struct Spool {
    path: Option<PathBuf>,
    /// The file's size: it holds entries when not 0. Kept here, and read
    /// from the disk only at start and after the spool was written or
    /// replayed: asking the file system on every batch cost two `stat`
    /// calls per batch. Only this daemon writes the file; one deleted by
    /// hand while pending fails the next replay, and batches go to a new
    /// spool until the replay after it (2 s) finds it readable: nothing is
    /// lost.
    len: u64,
    /// Refusal records are spooled only while `len` is below this.
    refusal_room: u64,
}

impl Spool {
    fn open(path: Option<PathBuf>, refusal_room: u64) -> Spool {
        let len = Self::on_disk(path.as_deref());
        Spool {
            path,
            len,
            refusal_room,
        }
    }

    fn on_disk(path: Option<&Path>) -> u64 {
        path.and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    fn pending(&self) -> bool {
        self.len > 0
    }

    /// Appends `entries`, but those marked in `refusals` only while the
    /// spool is under its refusal room; how many were left out.
    fn append(&mut self, entries: &[AuditEntry], refusals: &[bool]) -> Result<usize, String> {
        let room = self.len < self.refusal_room;
        let kept: Vec<&AuditEntry> = entries
            .iter()
            .zip(refusals)
            .filter(|(_, refusal)| room || !**refusal)
            .map(|(e, _)| e)
            .collect();
        let left_out = entries.len() - kept.len();
        if kept.is_empty() {
            return Ok(left_out);
        }
        let written = self.write(&kept);
        // A failed write may still have left part of a line in the file.
        self.len = Self::on_disk(self.path.as_deref());
        written.map(|()| left_out)
    }

    fn write(&self, entries: &[&AuditEntry]) -> Result<(), String> {
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
    async fn replay(&mut self, store: &Chained) -> bool {
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
        match store.append(&entries).await {
            Ok(_) => {
                if let Err(e) = std::fs::remove_file(path) {
                    // The entries are in the store; a leftover spool would
                    // be replayed twice, so say so loudly.
                    tracing::error!(error = %e, path = %path.display(), "audit spool replayed but not removed");
                }
                self.len = Self::on_disk(Some(path));
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

/// The writer's end of the queue.
struct Incoming {
    rx: mpsc::Receiver<Job>,
    on_the_way: Arc<OnTheWay>,
    gather: Duration,
    hold: Duration,
}

impl Incoming {
    /// While every entry of `batch` was handed in early and nobody waits
    /// for any of them, takes further entries instead of committing: their
    /// signatures are still being made. Ends when one is waited for, an
    /// entry that cannot wait arrives, the batch is full, or after `hold`.
    async fn hold(&mut self, batch: &mut Vec<Job>) {
        if !batch.iter().all(Job::may_wait) {
            return;
        }
        let deadline = tokio::time::sleep(self.hold);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                job = self.rx.recv() => match job {
                    Some(job) => {
                        let may_wait = job.may_wait();
                        batch.push(job);
                        if !may_wait {
                            return;
                        }
                    }
                    None => return,
                },
                () = self.on_the_way.waited_for.notified() => {
                    if !batch.iter().all(Job::may_wait) {
                        return;
                    }
                }
                () = &mut deadline => return,
            }
        }
    }

    /// Adds to `batch` the entries of requests still on their way, until
    /// none is left, the batch is full, or `gather` has passed.
    async fn gather(&mut self, batch: &mut Vec<Job>) {
        // The common case under light load: no timer for nothing.
        if !self.on_the_way.any() {
            return;
        }
        let deadline = tokio::time::sleep(self.gather);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH && self.on_the_way.any() {
            tokio::select! {
                // Entries first: one already queued joins even at the bound.
                biased;
                job = self.rx.recv() => match job {
                    Some(job) => batch.push(job),
                    // Closed: shutting down, commit what is here.
                    None => break,
                },
                // The last ticket left without an entry: the loop's check
                // ends the wait (or goes on, if a new one came meanwhile).
                () = self.on_the_way.none_left.notified() => {}
                () = &mut deadline => break,
            }
        }
    }
}

/// The store and the key the writer MACs its records under.
struct Chained {
    store: Arc<dyn Store>,
    key: Arc<AuditKey>,
}

impl Chained {
    async fn append(
        &self,
        entries: &[AuditEntry],
    ) -> Result<Vec<crate::audit::chain::AuditRecord>, crate::store::StoreError> {
        self.store.append_audit(&self.key, entries).await
    }
}

async fn write_loop(
    store: Chained,
    mut spool: Spool,
    mut incoming: Incoming,
    head: Head,
    metrics: AuditMetrics,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // After a failed write the store is not tried again on the request path
    // until this instant: a locked SQLite file fails only after its busy
    // timeout (10 s), and every batch waiting that long would stall signing.
    let mut store_down_until: Option<std::time::Instant> = None;
    let retry_later = || Some(std::time::Instant::now() + REPLAY_EVERY);
    // Refusal records left out of the spool, not yet said in the chain.
    let mut dropped: Option<Dropped> = None;
    loop {
        let received = if spool.pending() {
            match tokio::time::timeout(REPLAY_EVERY, incoming.rx.recv_many(&mut batch, MAX_BATCH))
                .await
            {
                Ok(n) => n,
                Err(_) => {
                    store_down_until = if spool.replay(&store).await {
                        None
                    } else {
                        retry_later()
                    };
                    continue;
                }
            }
        } else {
            incoming.rx.recv_many(&mut batch, MAX_BATCH).await
        };
        if received == 0 {
            break;
        }
        incoming.hold(&mut batch).await;
        incoming.gather(&mut batch).await;
        let started = std::time::Instant::now();
        let mut refusals = Vec::with_capacity(batch.len());
        let (mut entries, waiters): (Vec<AuditEntry>, Vec<_>) = batch
            .drain(..)
            .map(|job| {
                refusals.push(job.refusal);
                (job.entry, job.done)
            })
            .unzip();
        let mut owed = None;
        // Older spooled entries go first, or the chain would be out of order.
        let result = if store_down_until.is_some_and(|t| std::time::Instant::now() < t) {
            spool_or_fail(
                &mut spool,
                (&entries, &refusals),
                "store down, retried every 2 s",
                &mut dropped,
                &metrics,
            )
        } else if spool.replay(&store).await {
            // What was left out while the store was down is said first.
            owed = dropped.take();
            if let Some(left) = owed {
                entries.insert(0, left.summary(spool.refusal_room));
                refusals.insert(0, false);
            }
            match store.append(&entries).await {
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
                    spool_or_fail(
                        &mut spool,
                        (&entries, &refusals),
                        &e.to_string(),
                        &mut dropped,
                        &metrics,
                    )
                }
            }
        } else {
            store_down_until = retry_later();
            spool_or_fail(
                &mut spool,
                (&entries, &refusals),
                "store down, older entries still spooled",
                &mut dropped,
                &metrics,
            )
        };
        if result.is_err()
            && let Some(left) = owed
        {
            dropped = Some(left.merge(dropped));
        }
        metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_entries.observe(entries.len() as f64);
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }
    spool.replay(&store).await;
}

/// Refusal records the spool left out, since the chain last said so.
#[derive(Debug, Clone, Copy)]
struct Dropped {
    count: u64,
    first: i64,
    last: i64,
}

impl Dropped {
    fn merge(self, other: Option<Dropped>) -> Dropped {
        match other {
            None => self,
            Some(o) => Dropped {
                count: self.count + o.count,
                first: self.first.min(o.first),
                last: self.last.max(o.last),
            },
        }
    }

    /// The record that says so.
    fn summary(self, refusal_room: u64) -> AuditEntry {
        AuditEntry {
            at: self.last,
            action: "refusals".to_owned(),
            outcome: "dropped".to_owned(),
            detail: Some(format!(
                "{} records of refused requests between {} and {} (unix seconds) were not written: the store did not answer and the audit spool was past store.audit_spool_refusal_bytes = {refusal_room}",
                self.count, self.first, self.last
            )),
            ..AuditEntry::default()
        }
    }
}

fn spool_or_fail(
    spool: &mut Spool,
    (entries, refusals): (&[AuditEntry], &[bool]),
    why: &str,
    dropped: &mut Option<Dropped>,
    metrics: &AuditMetrics,
) -> Result<(), AuditError> {
    match spool.append(entries, refusals) {
        Ok(left_out) => {
            if left_out > 0 {
                // No room: every refusal of the batch was left out.
                let ats = entries
                    .iter()
                    .zip(refusals)
                    .filter(|(_, r)| **r)
                    .map(|(e, _)| e.at);
                let (first, last) = ats.fold((i64::MAX, i64::MIN), |(lo, hi), at| {
                    (lo.min(at), hi.max(at))
                });
                let now = Dropped {
                    count: left_out as u64,
                    first,
                    last,
                };
                // Said once per episode: a log line per refusal would fill
                // the disk the spool is kept from.
                if dropped.is_none() {
                    tracing::warn!(
                        spool_bytes = spool.len,
                        "records of refused requests are left out (counted in jwksd_audit_refusals_suppressed_total): the store does not answer and the audit spool is past store.audit_spool_refusal_bytes"
                    );
                }
                *dropped = Some(now.merge(*dropped));
                metrics.refusals_dropped.inc_by(left_out as u64);
            }
            if left_out < entries.len() {
                tracing::warn!(entries = entries.len() - left_out, reason = %why, "audit entries spooled locally until the store answers");
            }
            Ok(())
        }
        Err(spool_err) => {
            tracing::error!(reason = %why, spool = %spool_err, entries = entries.len(), "audit entries could not be written anywhere");
            Err(AuditError::Store(format!("{why}; spool: {spool_err}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    /// Long enough that a batch which waited for it could not go unnoticed
    /// by a test bounded at half of it.
    const LONG_GATHER: Duration = Duration::from_secs(60);
    const LONG_HOLD: Duration = Duration::from_secs(60);
    const BOUND: Duration = Duration::from_secs(30);

    async fn auditor(dir: &tempfile::TempDir) -> (Auditor, AuditMetrics, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("audit.db"))
                .await
                .unwrap(),
        );
        let metrics = AuditMetrics::default();
        let chain = ChainRules {
            key: Arc::new(AuditKey::derive(
                &crate::keys::seal::MasterKey::generate().unwrap().0,
            )),
            retention: false,
        };
        let (auditor, _task) = Auditor::start_waiting(
            store.clone(),
            chain,
            (None, 0),
            metrics.clone(),
            LONG_GATHER,
            LONG_HOLD,
        );
        (auditor, metrics, store)
    }

    fn entry(jti: &str) -> AuditEntry {
        AuditEntry {
            at: 1_700_000_000,
            action: "sign".to_owned(),
            outcome: "ok".to_owned(),
            jti: Some(jti.to_owned()),
            ..AuditEntry::default()
        }
    }

    /// Sends `jti`'s entry and waits until the writer has taken it, so that
    /// a batch is open when this returns. Sent on the queue directly: a
    /// spawned `record` might be sent only after the caller's next entry.
    async fn open_batch(auditor: &Auditor, jti: &str) -> oneshot::Receiver<Result<(), AuditError>> {
        let (done, committed) = oneshot::channel();
        let job = Job {
            entry: entry(jti),
            done,
            early: None,
            refusal: false,
        };
        auditor.tx.send(job).await.unwrap();
        taken(auditor).await;
        committed
    }

    /// Waits until the writer has taken everything sent so far.
    async fn taken(auditor: &Auditor) {
        while auditor.tx.capacity() < QUEUE {
            tokio::task::yield_now().await;
        }
    }

    async fn jtis(store: &Arc<dyn Store>) -> Vec<String> {
        store
            .audit_all()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.entry.jti.unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_waits_for_the_entry_of_a_request_on_its_way() {
        let dir = tempfile::tempdir().unwrap();
        let (auditor, metrics, store) = auditor(&dir).await;
        let ticket = auditor.ticket();
        // A second request on its way, cancelled once "second" is taken:
        // it keeps the batch open however late the writer gets to its wait.
        // Without it, a writer slower than this test could find no ticket
        // left between the hand-in of "second" and its arrival, and commit
        // "first" alone, as it should then.
        let cancelled = auditor.ticket();
        // The writer holds "first" and waits for the tickets' entries.
        let first = open_batch(&auditor, "first").await;
        assert_eq!(
            metrics.batch_entries.count(),
            0,
            "committed without waiting"
        );
        let mut second =
            std::pin::pin!(tokio::time::timeout(BOUND, ticket.record(entry("second"))));
        // Polled once, the record is on the queue (it cannot be committed
        // while `cancelled` is out).
        tokio::select! {
            biased;
            _ = &mut second => panic!("committed while a ticket was out"),
            () = std::future::ready(()) => {}
        }
        taken(&auditor).await;
        drop(cancelled);
        second
            .await
            .expect("the batch waited for its own sender's ticket")
            .unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(metrics.batch_entries.count(), 1, "one batch");
        assert_eq!(metrics.batch_entries.sum(), 2.0, "with both entries");
        assert_eq!(jtis(&store).await, ["first", "second"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_stops_waiting_when_the_last_ticket_leaves_without_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (auditor, metrics, _store) = auditor(&dir).await;

        // Dropped unused (a cancelled request).
        let ticket = auditor.ticket();
        let first = open_batch(&auditor, "first").await;
        drop(ticket);
        tokio::time::timeout(BOUND, first)
            .await
            .expect("the batch waited for a ticket that was dropped")
            .unwrap()
            .unwrap();
        assert_eq!(metrics.batch_entries.count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_entry_commits_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (auditor, metrics, _store) = auditor(&dir).await;
        tokio::time::timeout(BOUND, auditor.record(entry("alone")))
            .await
            .expect("a lone entry waited for the gathering bound")
            .unwrap();
        // A ticket's own entry does not wait for itself either.
        tokio::time::timeout(BOUND, auditor.ticket().record(entry("ticketed")))
            .await
            .expect("an entry waited for its own ticket")
            .unwrap();
        assert_eq!(metrics.batch_entries.count(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn early_entries_are_held_until_one_is_waited_for_then_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (auditor, metrics, store) = auditor(&dir).await;
        // One at a time, each taken by the writer before the next is sent:
        // a writer that did not hold them would commit "a" alone.
        let mut receipts = Vec::new();
        for jti in ["a", "b", "c"] {
            receipts.push(auditor.submit_early(entry(jti)).await.unwrap());
            taken(&auditor).await;
        }
        assert_eq!(metrics.batch_entries.count(), 0, "committed while held");
        let c = receipts.pop().unwrap();
        tokio::time::timeout(BOUND, c.durable())
            .await
            .expect("the entry waited for was not committed")
            .unwrap();
        assert_eq!(metrics.batch_entries.count(), 1, "one commit");
        assert_eq!(metrics.batch_entries.sum(), 3.0, "for all three");
        // The others were carried by that commit: durable without another.
        for receipt in receipts {
            receipt.durable().await.unwrap();
        }
        assert_eq!(metrics.batch_entries.count(), 1);
        assert_eq!(jtis(&store).await, ["a", "b", "c"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_that_cannot_wait_ends_the_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (auditor, metrics, store) = auditor(&dir).await;
        let early = auditor.submit_early(entry("early")).await.unwrap();
        taken(&auditor).await;
        tokio::time::timeout(BOUND, auditor.record(entry("refusal")))
            .await
            .expect("an entry that cannot wait was held")
            .unwrap();
        early.durable().await.unwrap();
        assert_eq!(metrics.batch_entries.count(), 1);
        assert_eq!(jtis(&store).await, ["early", "refusal"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_receipt_lets_its_entry_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (auditor, metrics, store) = auditor(&dir).await;
        // A ticket's early entry also takes it off the count at once.
        let ticket = auditor.ticket();
        let receipt = ticket.submit_early(entry("cancelled")).await.unwrap();
        assert!(!auditor.on_the_way.any(), "still on the count");
        taken(&auditor).await;
        drop(receipt);
        tokio::time::timeout(BOUND, async {
            while metrics.batch_entries.count() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("an early entry whose receipt was dropped stayed held");
        assert_eq!(jtis(&store).await, ["cancelled"]);
    }
}
