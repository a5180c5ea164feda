//! Commands that ask a running daemon over its socket: `sign`, `keys`,
//! `audit`. They print what the daemon answers.

use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;

use super::client;
use super::locate::socket_path;
use crate::cli::{AuditCommand, Cli, KeysCommand, SignArgs};
use crate::socket::keys::KeyView;

/// `jwksd sign`: prints the JWT alone.
pub async fn sign(cli: &Cli, args: &SignArgs) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({
        "client_id": args.client_id,
        "audience": args.aud,
        "alg": args.alg,
        "set": args.set,
        "lifetime_s": args.lifetime,
    });
    let answer = call(cli, Method::POST, "/v1/assertions", Some(body)).await?;
    let jwt = answer["assertion"]
        .as_str()
        .context("the daemon's answer has no assertion")?;
    println!("{jwt}");
    Ok(ExitCode::SUCCESS)
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

pub async fn keys(cli: &Cli, cmd: &KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List { set, json } => {
            let answer = call(cli, Method::GET, "/v1/keys", None).await?;
            let mut keys: Vec<KeyView> = serde_json::from_value(answer)?;
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

pub async fn audit(cli: &Cli, cmd: &AuditCommand) -> anyhow::Result<ExitCode> {
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
