//! The running daemon: builds [`Shared`] from its [`Parts`], starts the
//! servers (public HTTP, admin HTTP, Unix socket) and the lease loop
//! (`ticker`), and shuts them down in order. `run` takes already-bound
//! listeners and a shutdown token, so tests start the real daemon on port 0
//! and a temporary socket.

mod assemble;
mod backends_watch;
pub mod hygiene;
mod reload;
mod ticker;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::key::AuditKey;
use crate::audit::writer::{Auditor, ChainRules};
use crate::clock::Clock;
use crate::config::live::LivePolicies;
use crate::config::policy::Policies;
use crate::http::paths::PublicUrl;
use crate::http::tls::{CertStore, Tls};
use crate::keyring::Keyring;
use crate::keys::backend::Backends;
use crate::keys::seal::MasterKey;
use crate::lifecycle::executor::Executor;
use crate::metrics::Metrics;
use crate::net::{self, Limits, Plain};
use crate::socket::SocketLimits;
use crate::socket::credentials::PeerCredentials;
use crate::socket::refusals::{self, RefusalGate};
use crate::state::Shared;
use crate::store::Store;
use crate::types::Span;
use crate::workers::signing_pool::SigningPool;

pub use ticker::TICK;

/// How often the daemon logs the audit chain's head (`seq` and MAC of the
/// newest record), so that a log shipped off the host holds witnesses for
/// `audit verify --head`.
pub const HEAD_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// What the daemon is made of, built by the caller (`main` or a test).
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub master: Arc<MasterKey>,
    pub policies: Policies,
    /// Where `reload` reads policies from.
    pub policies_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
    /// Where private halves are made and kept: `software` and the tokens
    /// of `[backends.NAME]`.
    pub backends: Arc<Backends>,
    pub public_url: PublicUrl,
    /// Where audit records wait while the store is down.
    pub audit_spool: Option<PathBuf>,
    /// Bounds of each listener (public, admin, socket): every one gets
    /// its own `max_connections`.
    pub limits: Limits,
    /// The socket's own bounds: request deadline, connections per uid.
    pub socket_limits: SocketLimits,
    /// Audit records older than this are pruned by the lease holder.
    pub audit_retention: Option<Span>,
    /// Refusals of one peer uid recorded one by one per minute at most.
    pub audit_refusals_per_minute: u32,
    /// Refusal records are spooled only while the spool is under this.
    pub audit_spool_refusal_bytes: u64,
    /// When set, the public listener speaks TLS with this certificate,
    /// re-read when its files change (checked every tick) and on SIGHUP.
    pub tls: Option<Arc<CertStore>>,
    /// `[tokens]`: trust roots and timeouts of the token broker.
    pub tokens: crate::config::daemon::TokensConfig,
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
    reload: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A TLS configuration the crypto library refuses fails the start.
    let tls = parts.tls.clone().map(Tls::new).transpose()?;
    parts
        .store
        .bind_master_key(&parts.master.fingerprint())
        .await?;
    let metrics = Arc::new(Metrics::default());
    let (auditor, audit_task) = Auditor::start(
        parts.store.clone(),
        ChainRules {
            key: Arc::new(AuditKey::derive(&parts.master)),
            retention: parts.audit_retention.is_some(),
        },
        parts.audit_spool.clone(),
        parts.audit_spool_refusal_bytes,
        metrics.audit.clone(),
    );
    crate::audit::upgrade::key_the_chain(
        parts.store.as_ref(),
        &auditor,
        parts.clock.now().timestamp(),
    )
    .await?;
    let refusals = Arc::new(RefusalGate::new(
        parts.audit_refusals_per_minute,
        metrics.refusals_over_budget.clone(),
    ));
    for warning in parts.policies.warnings() {
        tracing::warn!("{warning}");
    }
    let policies = LivePolicies::new(parts.policies);
    let upstream = crate::tokens::upstream::Upstream::new(
        parts.tokens.ca_file.as_deref(),
        parts.tokens.connect_timeout,
        parts.tokens.timeout,
    )?;
    let tokens = Arc::new(crate::tokens::cache::TokenCache::new(parts.clock.clone()));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Shared {
        lifecycle: Arc::new(Executor::new(
            parts.store.clone(),
            parts.master.clone(),
            parts.backends.clone(),
            parts.clock.clone(),
            policies.clone(),
        )),
        keyring: Arc::new(Keyring::new(
            parts.store.clone(),
            policies.clone(),
            parts.master.clone(),
            parts.backends.clone(),
            metrics.store_errors.clone(),
        )),
        policies,
        clock: parts.clock,
        store: parts.store,
        auditor,
        metrics,
        signers: Arc::new(SigningPool::start(cores)?),
        public_url: parts.public_url,
        refusals,
        tokens,
        upstream,
        backends: parts.backends.clone(),
    };
    // Existing keys are served at once; a first start serves 503 until the
    // first tick has generated them.
    shared.keyring.refresh().await?;
    shared.metrics.prime(&shared.policies.current());

    let servers = spawn_servers(
        &shared,
        Servers {
            public: listeners.public,
            admin: listeners.admin,
            socket: listeners.socket,
            tls,
            limits: parts.limits,
            socket_limits: parts.socket_limits,
        },
        &shutdown,
    );
    let sweep = tokio::spawn(refusals::sweep(
        shared.refusals.clone(),
        shared.auditor.clone(),
        shared.clock.clone(),
        shutdown.clone(),
    ));
    let watch = tokio::spawn(backends_watch::watch(
        shared.backends.clone(),
        shared.metrics.clone(),
        shutdown.clone(),
    ));
    hygiene::notify_ready();
    let head_log = tokio::spawn(crate::audit::upgrade::log_head_every(
        shared.store.clone(),
        HEAD_LOG_EVERY,
        shutdown.clone(),
    ));
    let follow = ticker::Ticker {
        shared: shared.clone(),
        tls: parts.tls.clone(),
        policies_dir: parts.policies_dir,
        audit_retention: parts.audit_retention,
        orphans: Default::default(),
    };
    follow.run(reload, shutdown).await;
    hygiene::notify_stopping();
    servers.close();
    servers.wait().await;
    // The servers are done refusing: what is left to summarise is final.
    let _ = sweep.await;
    let _ = watch.await;
    refusals::flush(&shared.refusals, &shared.auditor, shared.clock.as_ref()).await;
    // The audit writer ends when its last handle is gone: the servers'
    // router states went with them, this is the last.
    let store = shared.store.clone();
    drop(follow);
    drop(shared);
    let _ = audit_task.await;
    let _ = head_log.await;
    // The last witness, once every record of this run is in the store.
    crate::audit::upgrade::log_head(store.as_ref()).await;
    let _ = std::fs::remove_file(&listeners.socket_path);
    tracing::info!("stopped");
    Ok(())
}

/// The listeners and how to serve them.
struct Servers {
    public: TcpListener,
    admin: Option<TcpListener>,
    socket: UnixListener,
    tls: Option<Tls>,
    limits: Limits,
    socket_limits: SocketLimits,
}

/// The three servers, each with its own router state taken from `shared`,
/// each through the one accept loop (`net::serve`).
fn spawn_servers(shared: &Shared, servers: Servers, shutdown: &CancellationToken) -> TaskTracker {
    let Servers {
        public,
        admin,
        socket,
        tls,
        limits,
        socket_limits,
    } = servers;
    let tracker = TaskTracker::new();
    let router = crate::http::public::router(shared);
    let stop = shutdown.clone();
    let plain = Plain::new(limits.header_timeout);
    match tls {
        Some(tls) => tracker.spawn(net::serve("public", public, tls, router, limits, stop)),
        None => tracker.spawn(net::serve("public", public, plain, router, limits, stop)),
    };
    if let Some(admin) = admin {
        let router = crate::http::admin::router(shared);
        let stop = shutdown.clone();
        tracker.spawn(net::serve("admin", admin, plain, router, limits, stop));
    }
    let router = crate::socket::router::router(shared, socket_limits.request_timeout);
    let stop = shutdown.clone();
    tracker.spawn(net::serve(
        "socket",
        socket,
        PeerCredentials::new(socket_limits.max_connections_per_uid),
        router,
        limits,
        stop,
    ));
    tracker
}
