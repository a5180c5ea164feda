//! Commands that ask a running daemon over its socket: `sign`, `keys`,
//! `audit`. They print what the daemon answers.

use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;

use super::client;
use super::locate::socket_path;
use crate::cli::{AuditCommand, Cli, KeysCommand, SignArgs, TokenArgs};
use crate::socket::keys::KeyView;

/// What `keys revoke` adds on PostgreSQL (SECURITY.md §3 "Destruction").
pub const POSTGRES_RESIDUE: &str = "note: the private half is erased from the key's row, but PostgreSQL keeps the old row version (sealed) until VACUUM reuses it, and in its WAL, WAL archives, standbys and backups, until the master key that sealed it is rotated away (jwksd seal rotate-master, SECURITY.md §6)";

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

/// `jwksd token`: prints the access token alone.
pub async fn token(cli: &Cli, args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({
        "client_id": args.client_id,
        "token_url": args.token_url,
        "scope": args.scope,
        "min_ttl_s": args.min_ttl,
        "alg": args.alg,
        "set": args.set,
    });
    let answer = call(cli, Method::POST, "/v1/tokens", Some(body)).await?;
    let token = answer["access_token"]
        .as_str()
        .context("the daemon's answer has no access_token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// `text` percent-encoded for a query string: set names are plain, but a
/// typo must reach the daemon as the name it is, not as other parameters.
fn query_value(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
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
                    "{:<32} {:<9} {:<10} {:<20} {:<20} {:<20}",
                    "KID", "STATE", "BACKEND", "PUBLISHED", "ACTIVATES/ED", "RETIRES/ED"
                );
                for k in keys {
                    println!(
                        "{:<32} {:<9} {:<10} {:<20} {:<20} {:<20}",
                        k.kid,
                        k.state,
                        k.backend,
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
            match &answer {
                serde_json::Value::Array(outcomes) => outcomes.iter().for_each(warn_handover),
                one => warn_handover(one),
            }
        }
        KeysCommand::Timeline { svg, set } => {
            let path = match set {
                Some(set) => format!("/v1/keys/timeline?set={}", query_value(set)),
                None => "/v1/keys/timeline".to_owned(),
            };
            let socket = socket_path(cli)?;
            let picture = client::fetch(&socket, Method::GET, &path, None).await?;
            std::fs::write(svg, &picture)
                .with_context(|| format!("--svg {}: cannot write", svg.display()))?;
            eprintln!("wrote {} ({} bytes)", svg.display(), picture.len());
        }
        KeysCommand::Revoke { kid } => {
            let body = serde_json::json!({ "kid": kid });
            let answer = call(cli, Method::POST, "/v1/admin/revoke", Some(body)).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            warn_handover(&answer);
            // The store keeps no usable copy, but PostgreSQL keeps old row
            // versions: an operator revoking a compromised key must know
            // where its sealed half still is. (stderr: stdout stays JSON.)
            if let Ok(config) = super::locate::load_config(cli)
                && matches!(config.store, crate::config::StoreUrl::Postgres(_))
            {
                eprintln!("{POSTGRES_RESIDUE}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells the operator, on stderr, when verifiers with a cached JWKS may
/// still refuse a signer that an emergency step just activated: the answer
/// on stdout stays machine-readable.
fn warn_handover(answer: &serde_json::Value) {
    let handover = &answer["handover"];
    if let (Some(kid), Some(until)) = (
        handover["kid"].as_str(),
        handover["caches_may_refuse_until"].as_str(),
    ) {
        eprintln!(
            "warning: {kid} signs now but was published only {}s ago: verifiers that cached the JWKS before that may refuse its assertions until {until}",
            handover["published_s_ago"]
        );
    }
}

pub async fn audit(cli: &Cli, cmd: &AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { head } => {
            // Checked here too, so a malformed witness is named before any
            // request, and a valid one (digits, a colon, hex) needs no
            // escaping in the query string.
            let witness = head
                .as_deref()
                .map(str::parse::<crate::audit::Witness>)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let path = match &witness {
                Some(w) => format!("/v1/audit/verify?head={w}"),
                None => "/v1/audit/verify".to_owned(),
            };
            let answer = call(cli, Method::GET, &path, None).await?;
            if answer["ok"].as_bool() == Some(true) {
                let unkeyed = answer["unkeyed"].as_u64().unwrap_or(0);
                print!("audit chain intact: {} records", answer["records"]);
                if unkeyed > 0 {
                    print!(
                        " ({unkeyed} of them unkeyed SHA-256 records from before the upgrade, bound by the first keyed record)"
                    );
                }
                println!();
                if let Some(w) = witness {
                    println!("witness {w} matches: nothing up to that record changed");
                }
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "audit chain BROKEN: {}",
                    answer["error"].as_str().unwrap_or("unknown")
                );
                Ok(ExitCode::FAILURE)
            }
        }
        AuditCommand::Head => {
            let answer = call(cli, Method::GET, "/v1/audit/head", None).await?;
            println!("{}", answer["head"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail { n, json } => {
            let answer = call(cli, Method::GET, &format!("/v1/audit?limit={n}"), None).await?;
            let records = answer.as_array().cloned().unwrap_or_default();
            for r in records {
                if *json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{}", audit_line(&r));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One audit record as a line of `audit tail`. Its text fields hold what
/// callers sent (client_id, audience, detail), so control characters are
/// shown escaped: a newline or a terminal escape in a refused request's
/// client_id must not forge a line or repaint the operator's terminal.
fn audit_line(r: &serde_json::Value) -> String {
    let text = |field: &str, absent: &'static str| printable(r[field].as_str().unwrap_or(absent));
    format!(
        "{:>6} {} {:<8} {:<10} uid={} client={} kid={} {}",
        // A JSON value ignores the width; its text does not.
        r["seq"].to_string(),
        r["at"],
        text("action", ""),
        text("outcome", ""),
        r["uid"],
        text("client_id", "-"),
        text("kid", "-"),
        text("detail", "")
    )
}

/// `s` with control characters (C0, DEL, C1), the bidirectional overrides
/// that reorder what a terminal shows, and the backslash escaped as Rust
/// writes them (`\n`, `\u{1b}`, `\\`); anything else unchanged.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_record_with_plain_text_prints_as_before() {
        let r = json!({"seq": 7, "at": 1700000000, "action": "sign", "outcome": "ok",
            "uid": 1000, "client_id": "app", "kid": "default-ES384-v1-abc", "detail": "aud https://ehr/token"});
        assert_eq!(
            audit_line(&r),
            "     7 1700000000 sign     ok         uid=1000 client=app kid=default-ES384-v1-abc aud https://ehr/token"
        );
    }

    #[test]
    fn caller_text_cannot_forge_a_line_or_send_terminal_escapes() {
        let forged = "x\n     8 1700000001 sign     ok         uid=0 client=admin";
        let r = json!({"seq": 7, "at": 1700000000, "action": "sign", "outcome": "refused",
            "uid": 4242, "client_id": forged, "detail": "\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{202e}txt.exe\\n"});
        let line = audit_line(&r);
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{line:?}"
        );
        assert!(line.contains("client=x\\n     8 1700000001"), "{line}");
        assert!(
            line.ends_with("\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\r\\u{202e}txt.exe\\\\n"),
            "{line}"
        );
    }
}
