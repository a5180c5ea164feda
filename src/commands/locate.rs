//! Where a command finds the config and the daemon's socket: `--config`,
//! `$JWKSD_CONFIG`, `./jwksd.toml`, `/etc/jwksd/jwksd.toml`; `--socket`, else
//! the config's `server.socket`.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::Cli;
use crate::config::daemon::{Config, default_config_path};

pub fn config_path(cli: &Cli) -> PathBuf {
    cli.config.clone().unwrap_or_else(default_config_path)
}

pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = config_path(cli);
    Ok(Config::load(&path)?)
}

pub fn socket_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.socket {
        Some(p) => Ok(p.clone()),
        None => Ok(load_config(cli)
            .context("the socket path comes from the config; or pass --socket")?
            .server
            .socket),
    }
}
