//! `jwksd serve`: process hygiene, config, store and listeners, then the
//! daemon until SIGTERM or SIGINT (SIGHUP reloads policies and the TLS
//! certificate).

use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::locate::load_config;
use crate::cli::Cli;
use crate::config::policy::Policies;
use crate::daemon::{Listeners, Parts};
use crate::http::paths::DEFAULT_SET_PATH;

pub(super) async fn run(cli: &Cli, allow_root: bool) -> anyhow::Result<ExitCode> {
    crate::daemon::hygiene::check_user(allow_root)?;
    crate::daemon::hygiene::harden();
    let config = load_config(cli)?;
    let policies = Policies::load_dir(&config.policies_dir)?;
    let master = crate::keys::seal::MasterKey::load(config.master_key_file.as_deref())
        .context("cannot load the master key ([seal] master_key_file or JWKSD_MASTER_KEY)")?;
    let parts = Parts::from_config(&config, policies, master).await?;
    let socket_path = match &cli.socket {
        Some(p) => p.clone(),
        None => config.server.socket.clone(),
    };
    let listeners = Listeners::bind(&config.server, socket_path).await?;
    let public_addr = listeners.public.local_addr()?;
    let admin_addr = listeners
        .admin
        .as_ref()
        .map(|a| a.local_addr())
        .transpose()?;
    let (public_url, socket_path) = (&parts.public_url, &listeners.socket_path);

    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    spawn_signal_handlers(shutdown.clone(), reload_tx)?;

    println!(
        "jwksd listening public={public_addr} admin={} socket={}",
        admin_addr.map_or("off".to_owned(), |a| a.to_string()),
        socket_path.display()
    );
    println!("  JWKS URL:   {}{DEFAULT_SET_PATH}", public_url.as_str());
    for p in parts
        .policies
        .iter()
        .filter(|p| p.name.as_str() != "default")
    {
        println!("  JWKS URL:   {}", public_url.jwks_url(&p.name));
    }
    println!("  socket:     {}", socket_path.display());
    if let Some(a) = admin_addr {
        println!("  admin:      http://{a}/readyz  http://{a}/metrics");
    }
    tracing::info!(store = %config.store, policies = parts.policies.len(), "starting");

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
