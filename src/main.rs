//! The `jwksd` binary: parse the command line, set up logging, run one
//! command, print the error chain and exit non-zero on failure.

use std::process::ExitCode;

use clap::Parser;

use jwksd::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    // Everything the daemon creates (socket before its chmod, database,
    // key files) starts private to its user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Out of the environment while this is the only thread (see there).
    let env_secrets = jwksd::commands::EnvSecrets::take();
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
    match runtime.block_on(jwksd::commands::run(cli, env_secrets)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,cryptoki::mechanism=off")
    });
    // A log that cannot be written (stderr on a full disk) loses lines; by
    // default the subscriber then reports it with eprintln!, which panics
    // on the same full stderr: the request or the audit writer logging it
    // would die with it.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
