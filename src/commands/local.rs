//! Commands that need no running daemon: `jwks` reads the store, `policy
//! check` reads policy files (and only warns about ones that group or
//! others may write, which `serve` refuses: it may run on a checkout).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::locate::load_config;
use crate::cli::Cli;
use crate::config::policy::{Policies, WritableFiles};

/// `jwksd jwks`: exactly the bytes the HTTP endpoint serves.
pub async fn jwks(cli: &Cli, set: &str) -> anyhow::Result<ExitCode> {
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

/// `jwksd policy check`: every problem on its own line; non-zero exit on any.
pub fn policy_check(cli: &Cli, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let result = if files.is_empty() {
        let config =
            load_config(cli).context("no policy files given and no config to find them")?;
        Policies::load_dir_as(&config.policies_dir, WritableFiles::Warn)
    } else {
        Policies::load_files_as(files, WritableFiles::Warn)
    };
    match result {
        Ok(policies) => {
            for p in policies.iter() {
                println!("ok: {} (set {}, {})", p.file.display(), p.name, p.schedule);
            }
            for warning in policies.warnings() {
                eprintln!("warning: {warning}");
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
