//! The lease loop: every replica follows the store; the one that holds the
//! lifecycle lease also runs the lifecycle ticks and the audit retention.
//! Also where a reload (SIGHUP) and TLS certificate changes are noticed,
//! since this loop is what wakes up every few seconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reload::reload_policies;
use crate::audit::chain::entry;
use crate::http::tls::CertStore;
use crate::lifecycle::orphans::OrphanSweep;
use crate::state::Shared;
use crate::types::Span;

/// How often the lifecycle looks at the stored timestamps (DESIGN rule 6:
/// a short tick, never a long sleep).
pub const TICK: Duration = Duration::from_secs(2);
/// How long the lifecycle lease lasts without renewal (DESIGN §4: at most
/// 15 s); renewed every TICK.
const LEASE_TTL_S: u32 = 15;
/// How often the lease holder applies the audit retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the lease holder sweeps the tokens for orphan objects: often
/// enough that `orphan_grace` is kept to within this, rarely enough that
/// listing a network HSM's objects costs nothing.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Longest wait between retries of a failing tick.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the loop needs beyond the shared handles.
pub(super) struct Ticker {
    pub shared: Shared,
    /// Re-read when its files change and on SIGHUP.
    pub tls: Option<Arc<CertStore>>,
    /// Where a reload reads policies from.
    pub policies_dir: PathBuf,
    /// Audit records older than this are pruned by the lease holder.
    pub audit_retention: Option<Span>,
    /// Token objects no key may hold (the lease holder sweeps them).
    pub orphans: OrphanSweep,
}

/// This replica's part in the lease, and when its next works are due.
struct LeaseState {
    holder: String,
    leader: bool,
    backoff: Duration,
    next_tick: Instant,
    next_prune: Instant,
    next_sweep: Instant,
}

impl Ticker {
    /// Runs until `shutdown`; gives the lease up on the way out, so that
    /// another replica takes over at once instead of after it expires.
    pub async fn run(&self, mut reload: mpsc::Receiver<()>, shutdown: CancellationToken) {
        let changes = self.shared.store.changes();
        let now = Instant::now();
        let mut lease = LeaseState {
            holder: lease_holder_id(),
            leader: false,
            backoff: TICK,
            next_tick: now,
            next_prune: now,
            next_sweep: now,
        };
        loop {
            if let Some(certs) = &self.tls {
                certs.check_for_change();
            }
            self.renew_lease(&mut lease).await;
            if lease.leader {
                self.tick_if_due(&mut lease).await;
                self.prune_if_due(&mut lease).await;
                self.sweep_if_due(&mut lease).await;
            }
            self.follow_store().await;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = changes.notified() => {}
                Some(()) = reload.recv() => {
                    reload_policies(&self.shared, &self.policies_dir).await;
                    if let Some(certs) = &self.tls {
                        // A refused pair is logged by `reload`; the old one stays.
                        let _ = certs.reload();
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        if lease.leader {
            let release = self.shared.store.release_lease(&lease.holder);
            let _ = tokio::time::timeout(Duration::from_secs(2), release).await;
            self.shared.metrics.leader.set(0);
        }
    }

    /// One replica at a time runs transitions; the lease is renewed every
    /// pass so a killed holder is replaced within LEASE_TTL + TICK.
    async fn renew_lease(&self, lease: &mut LeaseState) {
        let shared = &self.shared;
        let held = match shared.store.acquire_lease(&lease.holder, LEASE_TTL_S).await {
            Ok(held) => held,
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::warn!(error = %e, "cannot renew the lifecycle lease; transitions wait for the store");
                false
            }
        };
        if held != lease.leader {
            let holder = &lease.holder;
            if held {
                tracing::info!(%holder, "took the lifecycle lease: this replica runs key transitions");
            } else {
                tracing::warn!(%holder, "lost the lifecycle lease: another replica runs key transitions");
            }
            lease.leader = held;
            shared.metrics.leader.set(i64::from(held));
        }
    }

    /// A lifecycle tick, unless a failing one is backing off.
    async fn tick_if_due(&self, lease: &mut LeaseState) {
        if Instant::now() < lease.next_tick {
            return;
        }
        let shared = &self.shared;
        let started = std::time::Instant::now();
        let result = shared.lifecycle.tick().await;
        shared
            .metrics
            .tick_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => lease.backoff = TICK,
            Err(e) => {
                shared.metrics.transition_failures.inc();
                lease.backoff = (lease.backoff * 2).min(MAX_BACKOFF);
                tracing::error!(error = %e, retry_in_s = lease.backoff.as_secs(), "lifecycle tick failed");
            }
        }
        lease.next_tick = Instant::now() + lease.backoff;
    }

    /// The orphan sweep of the tokens (`lifecycle::orphans`): at the first
    /// pass as lease holder (so at start), then every [`SWEEP_EVERY`], or
    /// every shortest `orphan_grace` if that is shorter.
    async fn sweep_if_due(&self, lease: &mut LeaseState) {
        let shared = &self.shared;
        let Some(shortest_grace) = shared.backends.tokens_with_grace().map(|(_, g)| g).min() else {
            return;
        };
        if Instant::now() < lease.next_sweep {
            return;
        }
        lease.next_sweep = Instant::now() + SWEEP_EVERY.min(shortest_grace).max(TICK);
        let sets: Vec<_> = shared
            .policies
            .current()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let now = shared.clock.now();
        for (backend, report) in self
            .orphans
            .sweep(&shared.backends, shared.store.as_ref(), &sets, now)
            .await
        {
            for label in report.destroyed {
                let mut record = entry(now, "destroy", "ok");
                record.kid = Some(label);
                record.detail = Some(format!(
                    "backend {backend}: token object no key may hold, destroyed by the orphan sweep"
                ));
                if let Err(e) = shared.auditor.record(record).await {
                    tracing::error!(error = %e, "orphan destruction not audited");
                }
            }
        }
    }

    async fn prune_if_due(&self, lease: &mut LeaseState) {
        let Some(keep) = self.audit_retention else {
            return;
        };
        if Instant::now() < lease.next_prune {
            return;
        }
        lease.next_prune = Instant::now() + PRUNE_EVERY;
        self.prune_audit(keep).await;
    }

    /// Deletes audit records older than `keep`; the chain stays verifiable
    /// from the anchor the store keeps, and the pruning itself is audited.
    async fn prune_audit(&self, keep: Span) {
        let shared = &self.shared;
        let now = shared.clock.now();
        let before = now.timestamp() - keep.as_secs() as i64;
        match shared
            .store
            .prune_audit(&shared.auditor.chain().key, before)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(records = n, retention = %keep, "audit records past retention pruned");
                let mut record = entry(now, "prune", "ok");
                record.detail = Some(format!("{n} records older than {keep} pruned"));
                if let Err(e) = shared.auditor.record(record).await {
                    tracing::error!(error = %e, "pruning not audited");
                }
            }
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::warn!(error = %e, "audit pruning failed; retried in an hour");
            }
        }
    }

    /// Every replica follows the store: its own transitions, another
    /// replica's, or an admin call answered elsewhere.
    async fn follow_store(&self) {
        let shared = &self.shared;
        match shared.store.revision().await {
            Ok(rev) if rev != shared.keyring.snapshot().revision => {
                if let Err(e) = shared.keyring.refresh().await {
                    tracing::error!(error = %e, "could not refresh served keys; serving the previous ones");
                }
            }
            Ok(_) => {}
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::debug!(error = %e, "store does not answer; serving the keys in memory");
            }
        }
    }
}

/// Who holds the lease, as shown in logs: host, pid and a random part so a
/// restarted process never inherits its predecessor's lease.
fn lease_holder_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    let mut r = [0u8; 4];
    let _ = crate::keys::fill_random(&mut r);
    let r: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{r}", std::process::id())
}
