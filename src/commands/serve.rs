//! `jwksd serve`: process hygiene, config, store and listeners, then the
//! daemon until SIGTERM or SIGINT (SIGHUP reloads policies and the TLS
//! certificate).

use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::env_secrets::EnvSecrets;
use super::locate::load_config;
use crate::cli::{Cli, LogFormat};
use crate::config::policy::Policies;
use crate::daemon::{Listeners, Parts};
use crate::http::paths::DEFAULT_SET_PATH;

/// `env_secrets`: what `JWKSD_MASTER_KEY` and `JWKSD_PKCS11_PIN` held,
/// taken out of the environment by `main` before any thread started.
pub(super) async fn run(
    cli: &Cli,
    allow_root: bool,
    env_secrets: EnvSecrets,
) -> anyhow::Result<ExitCode> {
    crate::daemon::hygiene::check_user(allow_root)?;
    crate::daemon::hygiene::harden();
    let config = load_config(cli)?;
    let policies = Policies::load_dir(&config.policies_dir)?;
    let master = crate::keys::seal::MasterKey::load(
        env_secrets.master_key.as_deref().map(Vec::as_slice),
        config.master_key_file.as_deref(),
    )
    .context("cannot load the master key ([seal] master_key_file or JWKSD_MASTER_KEY)")?;
    let parts = Parts::from_config(&config, policies, master, env_secrets.pkcs11_pin).await?;
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

    let jwks_urls: Vec<String> =
        std::iter::once(format!("{}{DEFAULT_SET_PATH}", public_url.as_str()))
            .chain(
                parts
                    .policies
                    .iter()
                    .filter(|p| p.name.as_str() != "default")
                    .map(|p| public_url.jwks_url(&p.name)),
            )
            .collect();
    let banner = Banner {
        public: public_addr,
        admin: admin_addr,
        socket: socket_path,
        jwks_urls: &jwks_urls,
    };
    match cli.log_format {
        LogFormat::Human => banner.print_text(),
        LogFormat::Json => println!("{}", banner.json()),
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

/// What `serve` prints on stdout once it listens: where it listens and the
/// JWKS URLs to register. Scripts (and the tests) read the first line.
struct Banner<'a> {
    public: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    socket: &'a std::path::Path,
    jwks_urls: &'a [String],
}

impl Banner<'_> {
    fn print_text(&self) {
        println!(
            "jwksd listening public={} admin={} socket={}",
            self.public,
            self.admin.map_or("off".to_owned(), |a| a.to_string()),
            self.socket.display()
        );
        for url in self.jwks_urls {
            println!("  JWKS URL:   {url}");
        }
        println!("  socket:     {}", self.socket.display());
        if let Some(a) = self.admin {
            println!("  admin:      http://{a}/readyz  http://{a}/metrics");
        }
    }

    /// With `--log-format json` every line the daemon writes is one JSON
    /// object: the banner is one line shaped like the log's
    /// (`timestamp`, `level`, `fields.message`, `target`).
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "INFO",
            "fields": {
                "message": "jwksd listening",
                "public": self.public.to_string(),
                "admin": self.admin.map(|a| a.to_string()),
                "socket": self.socket.display().to_string(),
                "jwks_urls": self.jwks_urls,
            },
            "target": "jwksd::serve",
        })
    }
}
