//! The daemon inside the test process: `jwksd::daemon::run` on its own
//! multi-thread runtime on its own thread, built from the same files a
//! spawned daemon reads (so `cli()` and restarts on them keep working), and
//! logging to its own `daemon.log` even when a test runs several.
//!
//! What `jwksd serve` does besides is process-wide and stays with spawned
//! daemons: the root check, core dumps and dumpable, signal handlers,
//! `JWKSD_MASTER_KEY`, command-line flags.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jwksd::config::daemon::Config;
use jwksd::config::policy::Policies;
use jwksd::daemon::{Listeners, Parts};
use jwksd::keys::seal::MasterKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The log filter a spawned daemon gets through `RUST_LOG`.
pub const LOG_FILTER: &str = "debug,sqlx=warn,hyper=info";

/// How long a start may take before the test fails.
const START_WITHIN: Duration = Duration::from_secs(30);

/// A daemon running in this process. Dropping it aborts it.
pub struct InProcess {
    /// Cancelled by `stop`: in-flight requests finish, then `run` returns.
    shutdown: CancellationToken,
    /// Cancelled by `abort`: `run` is dropped where it stands.
    abort: CancellationToken,
    /// Where a spawned daemon's SIGHUP handler sends.
    reload: mpsc::Sender<()>,
    /// The daemon's thread; its result says whether `run` returned Ok.
    thread: Option<JoinHandle<bool>>,
}

/// Where a started daemon listens.
pub struct Bound {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub socket: PathBuf,
}

impl InProcess {
    /// Starts the daemon on `config_file`, logging to `log_file`; the error
    /// says why it did not start.
    pub fn start(config_file: &Path, log_file: &Path) -> Result<(InProcess, Bound), String> {
        private_files();
        let log = log_to(log_file)?;
        let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
        let (reload, reload_rx) = mpsc::channel(1);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let config_file = config_file.to_owned();
        let (stop, kill) = (shutdown.clone(), abort.clone());
        let thread = std::thread::Builder::new()
            .name("jwksd-in-process".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&log, || {
                    let runtime = runtime(&log);
                    let ok = runtime.block_on(async {
                        let started = parts(&config_file).await;
                        let (parts, listeners) = match started {
                            Ok(started) => started,
                            Err(e) => {
                                tracing::error!("cannot start: {e:#}");
                                let _ = bound_tx.send(Err(format!("{e:#}")));
                                return false;
                            }
                        };
                        let _ = bound_tx.send(bound(&listeners));
                        tokio::select! {
                            result = jwksd::daemon::run(parts, listeners, reload_rx, stop) => {
                                result.map_err(|e| tracing::error!("{e:#}")).is_ok()
                            }
                            () = kill.cancelled() => false,
                        }
                    });
                    // What `run` left spawned (an aborted daemon's servers)
                    // goes with its runtime.
                    runtime.shutdown_timeout(Duration::from_secs(5));
                    ok
                })
            })
            .map_err(|e| format!("cannot start the daemon's thread: {e}"))?;
        let mut daemon = InProcess {
            shutdown,
            abort,
            reload,
            thread: Some(thread),
        };
        match bound_rx.recv_timeout(START_WITHIN) {
            Ok(Ok(bound)) => Ok((daemon, bound)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                daemon.end();
                Err(format!("no listeners within {START_WITHIN:?}"))
            }
        }
    }

    /// What SIGHUP does to a spawned daemon: re-read policies and the TLS
    /// certificate (one pending reload at most, as there).
    pub fn reload(&self) {
        let _ = self.reload.try_send(());
    }

    /// What SIGTERM does: in-flight requests finish and `run` returns.
    /// Whether it returned Ok within `within` (else it is aborted).
    pub fn stop(mut self, within: Duration) -> bool {
        self.shutdown.cancel();
        let deadline = Instant::now() + within;
        let thread = self.thread.take().expect("a running daemon has a thread");
        while !thread.is_finished() {
            if Instant::now() > deadline {
                self.abort.cancel();
                let _ = thread.join();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        thread.join().unwrap_or(false)
    }

    /// Drops `run` where it stands and waits for its thread: nothing is
    /// flushed, the lease is not released and the socket file stays, as
    /// after a crash; the process itself goes on.
    fn end(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.abort.cancel();
            let _ = thread.join();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.end();
    }
}

/// The daemon's parts and listeners from its config file, built as `jwksd
/// serve` builds them. A spawned daemon gets an environment without
/// `JWKSD_MASTER_KEY`, so the key comes from its file here too; tests of
/// that variable spawn.
async fn parts(config_file: &Path) -> anyhow::Result<(Parts, Listeners)> {
    let config = Config::load(config_file)?;
    let key_file = config
        .master_key_file
        .as_deref()
        .context("the test config names no [seal] master_key_file")?;
    let policies = Policies::load_dir(&config.policies_dir)?;
    let master = MasterKey::load_file(key_file)?;
    let parts = Parts::from_config(&config, policies, master, None).await?;
    let listeners = Listeners::bind(&config.server, config.server.socket.clone()).await?;
    Ok((parts, listeners))
}

fn bound(listeners: &Listeners) -> Result<Bound, String> {
    let addr = |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| e.to_string());
    Ok(Bound {
        public: addr(&listeners.public)?,
        admin: addr(
            listeners
                .admin
                .as_ref()
                .ok_or("the test config has no admin_listen")?,
        )?,
        socket: listeners.socket_path.clone(),
    })
}

/// A subscriber of its own, writing what a spawned daemon writes to its
/// stderr, with the same filter, to the same file.
fn log_to(file: &Path) -> Result<tracing::Dispatch, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(LOG_FILTER))
        .with_writer(Arc::new(file))
        .finish();
    Ok(tracing::Dispatch::new(subscriber))
}

thread_local! {
    /// The log of the daemon whose runtime owns this thread.
    static LOG: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A runtime like `main`'s whose every thread (workers and blocking pool)
/// logs to `log`.
fn runtime(log: &tracing::Dispatch) -> tokio::runtime::Runtime {
    let log = log.clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jwksd-in-process-rt")
        .on_thread_start(move || {
            LOG.with(|l| *l.borrow_mut() = Some(tracing::dispatcher::set_default(&log)));
        })
        .on_thread_stop(|| LOG.with(|l| drop(l.borrow_mut().take())))
        .build()
        .expect("cannot build the daemon's runtime")
}

/// `main`'s umask, once for the whole test process: what the daemon creates
/// (database, socket before its chmod, spool) starts private, as it does
/// when spawned.
fn private_files() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    });
}
