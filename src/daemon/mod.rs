//! The running daemon: shared state, the lifecycle tick loop, policy reload,
//! and the three servers (public HTTP, admin HTTP, Unix socket). `run` takes
//! already-bound listeners and a shutdown token, so tests start the real
//! daemon on port 0 and a temporary socket.

pub mod hygiene;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::writer::Auditor;
use crate::clock::Clock;
use crate::config::policy::Policies;
use crate::http::tls::Tls;
use crate::keyring::Keyring;
use crate::keys::seal::MasterKey;
use crate::keys::source::KeySource;
use crate::lifecycle::Executor;
use crate::metrics::Metrics;
use crate::net;
use crate::state::Shared;
use crate::store::Store;
use crate::workers::signing_pool::SigningPool;

/// How often the lifecycle looks at the stored timestamps (DESIGN rule 6:
/// a short tick, never a long sleep).
pub const TICK: Duration = Duration::from_secs(2);
/// How long the lifecycle lease lasts without renewal (DESIGN §4: at most
/// 15 s); renewed every TICK.
const LEASE_TTL_S: u32 = 15;
/// How often the lease holder applies the audit retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest wait between retries of a failing tick.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the daemon is made of, built by the caller (`main` or a test).
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub master: Arc<MasterKey>,
    pub policies: Policies,
    /// Where `reload` reads policies from.
    pub policies_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub keygen: Arc<dyn KeySource>,
    pub public_url: String,
    /// Where audit records wait while the store is down.
    pub audit_spool: Option<PathBuf>,
    /// Bounds of each listener (public, admin, socket): every one gets
    /// its own `max_connections`.
    pub limits: crate::net::Limits,
    /// Audit records older than this are pruned by the lease holder.
    pub audit_retention: Option<crate::types::Span>,
    /// When set, the public listener speaks TLS with this certificate,
    /// re-read when its files change (checked every tick) and on SIGHUP.
    pub tls: Option<Arc<crate::http::tls::CertStore>>,
}

/// The bound listeners.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
    pub socket: UnixListener,
    /// The socket file, removed at shutdown.
    pub socket_path: PathBuf,
}

/// Runs until `shutdown` is cancelled, then lets in-flight requests finish.
/// A message on `reload` re-reads the policies (SIGHUP).
pub async fn run(
    parts: Parts,
    listeners: Listeners,
    mut reload: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = parts.tls.clone().map(Tls::new).transpose()?;
    parts
        .store
        .bind_master_key(&parts.master.fingerprint())
        .await?;
    let metrics = Metrics::default();
    let (auditor, audit_task) = Auditor::start(
        parts.store.clone(),
        parts.audit_spool.clone(),
        metrics.audit.clone(),
    );
    let policies = Arc::new(RwLock::new(Arc::new(parts.policies)));
    let scheduler = Executor::new(
        parts.store.clone(),
        parts.master.clone(),
        parts.keygen,
        parts.clock,
        policies.clone(),
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Arc::new(Shared {
        keyring: Keyring::default(),
        scheduler,
        store: parts.store,
        master: parts.master,
        auditor,
        metrics,
        public_url: parts.public_url.trim_end_matches('/').to_owned(),
        signers: SigningPool::start(cores)?,
        caller_limits: crate::socket::CallerLimits::default(),
    });
    // Existing keys are served at once; a first start serves 503 until the
    // first tick has generated them.
    shared.refresh().await?;
    shared.metrics.prime(&shared.scheduler.policies());

    let tracker = TaskTracker::new();
    let limits = parts.limits;
    let public = crate::http::public::router(shared.clone());
    match tls {
        Some(tls) => tracker.spawn(net::serve(
            "public",
            listeners.public,
            tls,
            public,
            limits,
            shutdown.clone(),
        )),
        None => tracker.spawn(net::serve(
            "public",
            listeners.public,
            net::Plain,
            public,
            limits,
            shutdown.clone(),
        )),
    };
    if let Some(admin) = listeners.admin {
        let router = crate::http::admin::router(shared.clone());
        tracker.spawn(net::serve(
            "admin",
            admin,
            net::Plain,
            router,
            limits,
            shutdown.clone(),
        ));
    }
    let socket = crate::socket::router(shared.clone());
    tracker.spawn(net::serve(
        "socket",
        listeners.socket,
        crate::socket::PeerCredentials,
        socket,
        limits,
        shutdown.clone(),
    ));

    crate::daemon::hygiene::notify_ready();
    let holder = lease_holder_id();
    let changes = shared.store.changes();
    let mut leader = false;
    let mut backoff = TICK;
    let mut next_tick = tokio::time::Instant::now();
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if let Some(certs) = &parts.tls {
            certs.check_for_change();
        }
        // One replica at a time runs transitions; the lease is renewed every
        // pass so a killed holder is replaced within LEASE_TTL + TICK.
        let held = match shared.store.acquire_lease(&holder, LEASE_TTL_S).await {
            Ok(held) => held,
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::warn!(error = %e, "cannot renew the lifecycle lease; transitions wait for the store");
                false
            }
        };
        if held != leader {
            if held {
                tracing::info!(%holder, "took the lifecycle lease: this replica runs key transitions");
            } else {
                tracing::warn!(%holder, "lost the lifecycle lease: another replica runs key transitions");
            }
            leader = held;
            shared.metrics.leader.set(i64::from(held));
        }
        if leader && tokio::time::Instant::now() >= next_tick {
            let started = std::time::Instant::now();
            let result = shared.scheduler.tick().await;
            shared
                .metrics
                .tick_seconds
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(_) => backoff = TICK,
                Err(e) => {
                    shared.metrics.transition_failures.inc();
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::error!(error = %e, retry_in_s = backoff.as_secs(), "lifecycle tick failed");
                }
            }
            next_tick = tokio::time::Instant::now() + backoff;
        }
        if leader
            && let Some(keep) = parts.audit_retention
            && tokio::time::Instant::now() >= next_prune
        {
            next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            prune_audit(&shared, keep).await;
        }
        // Every replica follows the store: its own transitions, another
        // replica's, or an admin call answered elsewhere.
        match shared.store.revision().await {
            Ok(rev) if rev != shared.keyring.snapshot().revision => {
                if let Err(e) = shared.refresh().await {
                    tracing::error!(error = %e, "could not refresh served keys; serving the previous ones");
                }
            }
            Ok(_) => {}
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::debug!(error = %e, "store does not answer; serving the keys in memory");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = changes.notified() => {}
            Some(()) = reload.recv() => {
                reload_policies(&shared, &parts.policies_dir, &policies).await;
                if let Some(certs) = &parts.tls {
                    // A refused pair is logged by `reload`; the old one stays.
                    let _ = certs.reload();
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    if leader {
        // Hand over at once instead of after the lease expires.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), shared.store.release_lease(&holder)).await;
        shared.metrics.leader.set(0);
    }
    crate::daemon::hygiene::notify_stopping();
    tracker.close();
    tracker.wait().await;
    drop(shared);
    let _ = audit_task.await;
    let _ = std::fs::remove_file(&listeners.socket_path);
    tracing::info!("stopped");
    Ok(())
}

/// Deletes audit records older than `keep`; the chain stays verifiable from
/// the anchor the store keeps, and the pruning itself is audited.
async fn prune_audit(shared: &Shared, keep: crate::types::Span) {
    let now = shared.scheduler.clock().now();
    let before = now.timestamp() - keep.as_secs() as i64;
    match shared.store.prune_audit(before).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(records = n, retention = %keep, "audit records past retention pruned");
            let mut entry = crate::audit::entry(now, "prune", "ok");
            entry.detail = Some(format!("{n} records older than {keep} pruned"));
            if let Err(e) = shared.auditor.record(entry).await {
                tracing::error!(error = %e, "pruning not audited");
            }
        }
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::warn!(error = %e, "audit pruning failed; retried in an hour");
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

/// SIGHUP: a bad policy is refused and the old one kept; a good one
/// replaces it and pending keys move to the new schedule.
async fn reload_policies(
    shared: &Shared,
    dir: &std::path::Path,
    handle: &crate::lifecycle::executor::PolicyHandle,
) {
    let mut entry = crate::audit::entry(shared.scheduler.clock().now(), "reload", "ok");
    match Policies::load_dir(dir) {
        Err(e) => {
            tracing::error!(error = %e, "policy reload refused; keeping the policies in force");
            entry.outcome = "refused".into();
            entry.detail = Some(e.to_string());
        }
        Ok(new) => {
            *handle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
            tracing::info!(dir = %dir.display(), "policies reloaded");
            if let Err(e) = shared.scheduler.reschedule().await {
                tracing::error!(error = %e, "rescheduling after reload failed; next tick retries");
            }
            if let Err(e) = shared.refresh().await {
                tracing::error!(error = %e, "could not refresh served keys after reload");
            }
        }
    }
    if let Err(e) = shared.auditor.record(entry).await {
        tracing::error!(error = %e, "reload not audited");
    }
}
