//! `jwksd serve`: process hygiene, config, store and listeners, then the
//! daemon until SIGTERM or SIGINT (SIGHUP reloads policies and the TLS
//! certificate).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::locate::load_config;
use crate::cli::Cli;
use crate::config::policy::Policies;
use crate::daemon::{Listeners, Parts};
use crate::http::paths::{DEFAULT_SET_PATH, PublicUrl};

pub(super) async fn run(cli: &Cli, allow_root: bool) -> anyhow::Result<ExitCode> {
    crate::daemon::hygiene::check_user(allow_root)?;
    crate::daemon::hygiene::harden();
    let config = load_config(cli)?;
    let policies = Policies::load_dir(&config.policies_dir)?;
    let master = crate::keys::seal::MasterKey::load(config.master_key_file.as_deref())
        .context("cannot load the master key ([seal] master_key_file or JWKSD_MASTER_KEY)")?;
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            crate::http::tls::CertStore::load(cert, key)
                .context("cannot use the TLS certificate (server.tls_cert, server.tls_key)")?,
        )),
        _ => None,
    };
    let store = crate::store::open(&config.store)
        .await
        .with_context(|| format!("cannot open the store {}", config.store))?;
    let public = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let admin = match config.server.admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?,
        ),
        None => None,
    };
    let socket_path = match &cli.socket {
        Some(p) => p.clone(),
        None => config.server.socket.clone(),
    };
    let socket = crate::socket::bind(
        &socket_path,
        config.server.socket_mode,
        config.server.socket_group.as_deref(),
    )?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.as_ref().map(|a| a.local_addr()).transpose()?;
    let public_url = PublicUrl::new(&config.server.public_url);

    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    spawn_signal_handlers(shutdown.clone(), reload_tx)?;

    println!(
        "jwksd listening public={public_addr} admin={} socket={}",
        admin_addr.map_or("off".to_owned(), |a| a.to_string()),
        socket_path.display()
    );
    println!("  JWKS URL:   {}{DEFAULT_SET_PATH}", public_url.as_str());
    for p in policies.iter().filter(|p| p.name.as_str() != "default") {
        println!("  JWKS URL:   {}", public_url.jwks_url(&p.name));
    }
    println!("  socket:     {}", socket_path.display());
    if let Some(a) = admin_addr {
        println!("  admin:      http://{a}/readyz  http://{a}/metrics");
    }
    tracing::info!(store = %config.store, policies = policies.len(), "starting");

    let parts = Parts {
        store,
        master: Arc::new(master),
        policies,
        policies_dir: config.policies_dir.clone(),
        clock: Arc::new(crate::clock::GuardedClock::system()),
        keygen: Arc::new(crate::keys::source::AwsLcKeys),
        public_url,
        audit_spool: Some(config.audit_spool.clone()),
        audit_retention: config.audit_retention,
        limits: crate::net::Limits {
            max_connections: config.server.max_connections,
            header_timeout: config.server.header_timeout,
            ..Default::default()
        },
        tls,
    };
    let listeners = Listeners {
        public,
        admin,
        socket,
        socket_path,
    };
    crate::daemon::run(parts, listeners, reload_rx, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

fn spawn_signal_handlers(
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); shutdown.cancel(); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); shutdown.cancel(); break; }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading policies and TLS certificate"); let _ = reload.try_send(()); }
            }
        }
    });
    Ok(())
}
