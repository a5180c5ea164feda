//! The `jwksd` binary: parse the command line, set up logging, run one
//! command, print the error chain and exit non-zero on failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hyper::Method;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use jwksd::cli::{AuditCommand, Cli, Command, KeysCommand, LogFormat, PolicyCommand, SealCommand};
use jwksd::config::{Config, default_config_path};
use jwksd::daemon::{Listeners, Parts};
use jwksd::policy::Policies;

fn main() -> ExitCode {
    // Everything the daemon creates (socket before its chmod, database,
    // key files) starts private to its user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config.clone().unwrap_or_else(default_config_path)
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = config_path(cli);
    Ok(Config::load(&path)?)
}

fn socket_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.socket {
        Some(p) => Ok(p.clone()),
        None => Ok(load_config(cli)
            .context("the socket path comes from the config; or pass --socket")?
            .server
            .socket),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Serve { allow_root } => serve(&cli, *allow_root).await,
        Command::Init { dir } => {
            let report = jwksd::init::run(dir)?;
            for p in &report.written {
                println!("wrote {}", p.display());
            }
            for p in &report.kept {
                println!("kept  {} (already there)", p.display());
            }
            println!(
                "start the daemon with: jwksd serve --config {}",
                report.config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(cmd) => keys(&cli, cmd).await,
        Command::Sign(args) => {
            let body = serde_json::json!({
                "client_id": args.client_id,
                "audience": args.aud,
                "alg": args.alg,
                "set": args.set,
                "lifetime_s": args.lifetime,
            });
            let answer = call(&cli, Method::POST, "/v1/assertions", Some(body)).await?;
            let jwt = answer["assertion"]
                .as_str()
                .context("the daemon's answer has no assertion")?;
            println!("{jwt}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Jwks { set } => jwks(&cli, set).await,
        Command::Policy(PolicyCommand::Check { files }) => policy_check(&cli, files),
        Command::Audit(cmd) => audit(&cli, cmd).await,
        Command::Simulate(args) => jwksd::simulate::cli(args).await,
        Command::Seal(SealCommand::RotateMaster) => {
            let config = load_config(&cli)?;
            let socket = cli
                .socket
                .clone()
                .unwrap_or_else(|| config.server.socket.clone());
            let report = jwksd::reseal::rotate_master(&config, &socket).await?;
            if report.completed_interrupted {
                println!(
                    "finished an interrupted rotation: master key {} -> {}",
                    report.old_fingerprint, report.new_fingerprint
                );
            } else {
                println!(
                    "re-sealed {} private keys: master key {} -> {}; the old key opens nothing now",
                    report.resealed, report.old_fingerprint, report.new_fingerprint
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The request body without `null` members, so optional fields stay absent.
fn strip_nulls(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    v
}

async fn call(
    cli: &Cli,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let socket = socket_path(cli)?;
    Ok(jwksd::client::call(&socket, method, path, body.map(strip_nulls)).await?)
}

async fn serve(cli: &Cli, allow_root: bool) -> anyhow::Result<ExitCode> {
    jwksd::hygiene::check_user(allow_root)?;
    jwksd::hygiene::harden();
    let config = load_config(cli)?;
    let policies = Policies::load_dir(&config.policies_dir)?;
    let master = jwksd::seal::MasterKey::load(config.master_key_file.as_deref())
        .context("cannot load the master key ([seal] master_key_file or JWKSD_MASTER_KEY)")?;
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            jwksd::http::tls::CertStore::load(cert, key)
                .context("cannot use the TLS certificate (server.tls_cert, server.tls_key)")?,
        )),
        _ => None,
    };
    let store = jwksd::store::open(&config.store)
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
    let socket = jwksd::socket::bind(
        &socket_path,
        config.server.socket_mode,
        config.server.socket_group.as_deref(),
    )?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.as_ref().map(|a| a.local_addr()).transpose()?;
    let public_url = config.server.public_url.trim_end_matches('/').to_owned();

    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    spawn_signal_handlers(shutdown.clone(), reload_tx)?;

    println!(
        "jwksd listening public={public_addr} admin={} socket={}",
        admin_addr.map_or("off".to_owned(), |a| a.to_string()),
        socket_path.display()
    );
    println!("  JWKS URL:   {public_url}/.well-known/jwks.json");
    for p in policies.iter().filter(|p| p.name.as_str() != "default") {
        println!("  JWKS URL:   {public_url}/jwks/{}.json", p.name);
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
        clock: Arc::new(jwksd::clock::GuardedClock::system()),
        keygen: Arc::new(jwksd::scheduler::AwsLcKeys),
        public_url,
        audit_spool: Some(config.audit_spool.clone()),
        audit_retention: config.audit_retention,
        socket_limits: jwksd::socket::SocketLimits {
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
    jwksd::daemon::run(parts, listeners, reload_rx, shutdown).await?;
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

async fn keys(cli: &Cli, cmd: &KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List { set, json } => {
            let answer = call(cli, Method::GET, "/v1/keys", None).await?;
            let mut keys: Vec<jwksd::socket::KeyView> = serde_json::from_value(answer)?;
            if let Some(set) = set {
                keys.retain(|k| &k.set == set);
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<32} {:<9} {:<20} {:<20} {:<20}",
                    "KID", "STATE", "PUBLISHED", "ACTIVATES/ED", "RETIRES/ED"
                );
                for k in keys {
                    println!(
                        "{:<32} {:<9} {:<20} {:<20} {:<20}",
                        k.kid,
                        k.state,
                        k.publish_at.unwrap_or_default(),
                        k.activate_at.unwrap_or_else(|| "-".into()),
                        k.retire_at.unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        KeysCommand::Rotate { set, alg, now } => {
            let body = serde_json::json!({ "set": set, "alg": alg, "now": now });
            let answer = call(cli, Method::POST, "/v1/admin/rotate", Some(body)).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        KeysCommand::Revoke { kid } => {
            let body = serde_json::json!({ "kid": kid });
            let answer = call(cli, Method::POST, "/v1/admin/revoke", Some(body)).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn jwks(cli: &Cli, set: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let config = load_config(cli)?;
    let store = jwksd::store::open_read_only(&config.store)
        .await
        .with_context(|| format!("cannot read the store {}", config.store))?;
    let bytes = jwksd::keyring::published_jwks(store.as_ref(), set)
        .await?
        .with_context(|| format!("set {set:?} has no published keys in {}", config.store))?;
    std::io::stdout().write_all(&bytes.bytes)?;
    Ok(ExitCode::SUCCESS)
}

fn policy_check(cli: &Cli, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let result = if files.is_empty() {
        let config =
            load_config(cli).context("no policy files given and no config to find them")?;
        Policies::load_dir(&config.policies_dir)
    } else {
        Policies::load_files(files)
    };
    match result {
        Ok(policies) => {
            for p in policies.iter() {
                println!("ok: {} (set {}, {})", p.file.display(), p.name, p.schedule);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            for problem in e.problems() {
                eprintln!("error: {problem}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn audit(cli: &Cli, cmd: &AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify => {
            let answer = call(cli, Method::GET, "/v1/audit/verify", None).await?;
            if answer["ok"].as_bool() == Some(true) {
                println!("audit chain intact: {} records", answer["records"]);
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "audit chain BROKEN: {}",
                    answer["error"].as_str().unwrap_or("unknown")
                );
                Ok(ExitCode::FAILURE)
            }
        }
        AuditCommand::Tail { n, json } => {
            let answer = call(cli, Method::GET, &format!("/v1/audit?limit={n}"), None).await?;
            let records = answer.as_array().cloned().unwrap_or_default();
            for r in records {
                if *json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:>6} {} {:<8} {:<10} uid={} client={} kid={} {}",
                        r["seq"],
                        r["at"],
                        r["action"].as_str().unwrap_or(""),
                        r["outcome"].as_str().unwrap_or(""),
                        r["uid"],
                        r["client_id"].as_str().unwrap_or("-"),
                        r["kid"].as_str().unwrap_or("-"),
                        r["detail"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
