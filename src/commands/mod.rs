//! What each `jwksd` subcommand does. `main` parses the command line and
//! sets up logging; [`run`] dispatches here: `serve` runs the daemon,
//! `remote` commands talk to a running daemon over its socket (through
//! `client`), `local` ones read files or the store.

mod backend;
pub mod client;
mod env_secrets;
pub mod init;
mod local;
mod locate;
mod remote;
pub mod reseal;
mod serve;
mod simulate;

use std::process::ExitCode;

pub use env_secrets::EnvSecrets;

use crate::cli::{BackendCommand, Cli, Command, PolicyCommand, SealCommand};

/// Runs the command `cli` names; `Ok` carries the exit code.
pub async fn run(cli: Cli, env_secrets: EnvSecrets) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Serve { allow_root } => serve::run(&cli, *allow_root, env_secrets).await,
        Command::Init { dir, allow_root } => {
            key_hygiene("init", *allow_root)?;
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
        Command::Keys(cmd) => remote::keys(&cli, cmd).await,
        Command::Sign(args) => remote::sign(&cli, args).await,
        Command::Token(args) => remote::token(&cli, args).await,
        Command::Jwks { set } => local::jwks(&cli, set).await,
        Command::Policy(PolicyCommand::Check { files }) => local::policy_check(&cli, files),
        Command::Audit(cmd) => remote::audit(&cli, cmd).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Backend(BackendCommand::Check { name }) => {
            backend::check(&cli, name.as_deref(), env_secrets.pkcs11_pin)
        }
        Command::Backend(BackendCommand::Objects { name, json }) => {
            backend::objects(&cli, name.as_deref(), *json, env_secrets.pkcs11_pin)
        }
        Command::Seal(SealCommand::RotateMaster { allow_root }) => {
            key_hygiene("seal rotate-master", *allow_root)?;
            let config = locate::load_config(&cli)?;
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

/// What `serve` does first, for the other commands that hold keys in
/// clear or write key files (`init`, `seal rotate-master`): root refused
/// unless `allow_root`, no core dumps, not dumpable. `jwks` reads public
/// halves only; `keys`, `sign` and `audit` hold nothing but the answer.
fn key_hygiene(command: &'static str, allow_root: bool) -> anyhow::Result<()> {
    crate::daemon::hygiene::check_key_command_user(command, allow_root)?;
    crate::daemon::hygiene::harden();
    Ok(())
}
