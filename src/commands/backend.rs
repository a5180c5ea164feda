//! `jwksd backend check [NAME]`: what an operator runs before pointing a
//! policy at a token: does the module load, does the PIN log in, does the
//! token have the mechanisms jwksd needs, can it sign what aws-lc-rs
//! verifies. Needs the config, not the daemon (the token may be shared
//! with a running daemon: the check uses session keys, which vanish with
//! its session and never touch the daemon's objects).

use std::process::ExitCode;

use zeroize::Zeroizing;

use super::locate::load_config;
use crate::cli::Cli;
use crate::config::daemon::Config;
use crate::config::policy::Policies;
use crate::keys::backend::Backends;
use crate::keys::pkcs11::TokenObject;
use crate::types::Kid;

/// The RSA size checked when no policy names the backend (or the policies
/// do not load): the policies' default.
const DEFAULT_CHECK_RSA_BITS: u32 = 4096;

pub(super) fn check(
    cli: &Cli,
    name: Option<&str>,
    pin_env: Option<Zeroizing<Vec<u8>>>,
) -> anyhow::Result<ExitCode> {
    let Some((config, backends)) = configured(cli, name, pin_env)? else {
        return Ok(ExitCode::SUCCESS);
    };
    // The largest RSA size a policy on each backend asks for, so the
    // check generates what the lifecycle will.
    let policies = Policies::load_dir(&config.policies_dir).ok();
    let mut failed = false;
    for token in backends.tokens() {
        if name.is_some_and(|n| n != token.name()) {
            continue;
        }
        let rsa_bits = policies
            .as_ref()
            .and_then(|all| {
                all.iter()
                    .filter(|p| p.backend == token.name())
                    .map(|p| p.rsa_bits)
                    .max()
            })
            .unwrap_or(DEFAULT_CHECK_RSA_BITS);
        println!("backend {}:", token.name());
        match token.connect().and_then(|()| token.check(rsa_bits)) {
            Ok(report) => {
                print!("{report}");
                if !report.passed() {
                    failed = true;
                }
            }
            Err(e) => {
                println!("  FAILED: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `jwksd backend objects [NAME]`: what jwksd keeps in each token, as the
/// token reports it (an operator's view of what the orphan sweep judges).
pub(super) fn objects(
    cli: &Cli,
    name: Option<&str>,
    json: bool,
    pin_env: Option<Zeroizing<Vec<u8>>>,
) -> anyhow::Result<ExitCode> {
    let Some((_, backends)) = configured(cli, name, pin_env)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if !json {
        println!(
            "{:<10} {:<40} {:<8} {:<10} {:<11}",
            "BACKEND", "LABEL", "CLASS", "SENSITIVE", "EXTRACTABLE"
        );
    }
    for token in backends.tokens() {
        if name.is_some_and(|n| n != token.name()) {
            continue;
        }
        let mut objects = token.list_objects()?;
        objects.sort_by(|a, b| (&a.label, !a.private).cmp(&(&b.label, !b.private)));
        for object in objects {
            let attributes = if object.private {
                Some(token.private_attributes(&object_kid(&object))?)
            } else {
                None
            };
            let class = if object.private { "private" } else { "public" };
            if json {
                let line = serde_json::json!({
                    "backend": token.name(),
                    "label": object.label,
                    "class": class,
                    "sensitive": attributes.map(|a| a.sensitive),
                    "extractable": attributes.map(|a| a.extractable),
                    "always_sensitive": attributes.map(|a| a.always_sensitive),
                    "never_extractable": attributes.map(|a| a.never_extractable),
                });
                println!("{line}");
            } else {
                let flag = |v: Option<bool>| v.map_or("-", |b| if b { "yes" } else { "no" });
                println!(
                    "{:<10} {:<40} {:<8} {:<10} {:<11}",
                    token.name(),
                    object.label,
                    class,
                    flag(attributes.map(|a| a.sensitive)),
                    flag(attributes.map(|a| a.extractable)),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The config and its tokens (PINs read), refusing a `name` that no
/// `[backends.NAME]` table defines; `None` (after saying so) when there
/// is no table at all.
fn configured(
    cli: &Cli,
    name: Option<&str>,
    pin_env: Option<Zeroizing<Vec<u8>>>,
) -> anyhow::Result<Option<(Config, Backends)>> {
    let config = load_config(cli)?;
    if let Some(name) = name
        && !config.backends.iter().any(|b| b.name == name)
    {
        anyhow::bail!(
            "{}: no [backends.{name}] table (defined: {})",
            config.file.display(),
            config
                .backends
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if config.backends.is_empty() {
        println!(
            "{}: no [backends.NAME] table: every key is software (sealed in the store)",
            config.file.display()
        );
        return Ok(None);
    }
    let backends = Backends::from_config(&config, pin_env.as_deref().map(Vec::as_slice))?;
    Ok(Some((config, backends)))
}

/// The kid under which the driver finds `object`: its CKA_ID (the kid, or
/// the temporary label of an unfinished generation).
fn object_kid(object: &TokenObject) -> Kid {
    Kid::from_stored(String::from_utf8_lossy(&object.id).into_owned())
}
