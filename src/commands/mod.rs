//! What each `jwksd` subcommand does. `main` parses the command line and
//! sets up logging; [`run`] dispatches here. Commands that talk to a running
//! daemon go through [`client`] over its socket.

pub mod client;
pub mod init;
pub mod reseal;
mod serve;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;

use crate::cli::{AuditCommand, Cli, Command, KeysCommand, PolicyCommand, SealCommand};
use crate::config::policy::Policies;
use crate::config::{Config, default_config_path};

pub(crate) fn config_path(cli: &Cli) -> PathBuf {
    cli.config.clone().unwrap_or_else(default_config_path)
}

pub(crate) fn load_config(cli: &Cli) -> anyhow::Result<Config> {
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

/// Runs the command `cli` names; `Ok` carries the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Serve { allow_root } => serve::run(&cli, *allow_root).await,
        Command::Init { dir } => {
            let report = init::run(dir)?;
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
        Command::Simulate(args) => simulate::run(args).await,
        Command::Seal(SealCommand::RotateMaster) => {
            let config = load_config(&cli)?;
            let socket = cli
                .socket
                .clone()
                .unwrap_or_else(|| config.server.socket.clone());
            let report = reseal::rotate_master(&config, &socket).await?;
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
    Ok(client::call(&socket, method, path, body.map(strip_nulls)).await?)
}

async fn keys(cli: &Cli, cmd: &KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List { set, json } => {
            let answer = call(cli, Method::GET, "/v1/keys", None).await?;
            let mut keys: Vec<crate::socket::KeyView> = serde_json::from_value(answer)?;
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
    let store = crate::store::open_read_only(&config.store)
        .await
        .with_context(|| format!("cannot read the store {}", config.store))?;
    let bytes = crate::keyring::published_jwks(store.as_ref(), set)
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
