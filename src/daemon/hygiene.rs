//! Process hygiene at start-up, for `serve` and for every other command
//! that holds keys in clear or writes key files (`init`, `seal
//! rotate-master`): no core dumps (they would hold unsealed keys), no
//! ptrace by same-uid processes, refuse to run as root unless the operator
//! says so; and tell systemd when the daemon is ready.

use nix::sys::resource::{Resource, setrlimit};

/// Why the daemon will not start.
#[derive(Debug, thiserror::Error)]
pub enum HygieneError {
    #[error(
        "refusing to run as root: a key daemon needs no privileges; run it as a dedicated user (see deploy/systemd) or pass --allow-root"
    )]
    Root,
    /// A command that writes key files, run as root.
    #[error(
        "refusing to run `jwksd {command}` as root: the key files it writes would belong to root, and the daemon, running as its own user, could not read them; run it as the daemon's user (e.g. `sudo -u jwksd jwksd {command}`), or pass --allow-root if the daemon runs as root too (a container whose user namespace maps root to an unprivileged uid)"
    )]
    RootKeyCommand {
        /// The command as typed after `jwksd`, e.g. `seal rotate-master`.
        command: &'static str,
    },
}

/// Refuses uid 0 unless `allow_root`.
pub fn check_user(allow_root: bool) -> Result<(), HygieneError> {
    if nix::unistd::geteuid().is_root() && !allow_root {
        return Err(HygieneError::Root);
    }
    if nix::unistd::geteuid().is_root() {
        tracing::warn!("running as root (--allow-root)");
    }
    Ok(())
}

/// Refuses uid 0 for a command that writes key files (`init`, `seal
/// rotate-master`) unless `allow_root`, as [`check_user`] does for `serve`.
pub fn check_key_command_user(command: &'static str, allow_root: bool) -> Result<(), HygieneError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    if !allow_root {
        return Err(HygieneError::RootKeyCommand { command });
    }
    tracing::warn!(command, "running as root (--allow-root)");
    Ok(())
}

/// Turns core dumps off and makes the process non-dumpable (which also
/// stops same-uid processes from attaching a debugger or reading
/// /proc/<pid>/mem). Best effort: each failure is logged, none is fatal.
pub fn harden() {
    // Under systemd (LimitCORE=0 with setrlimit filtered out) there is
    // nothing to do, and trying would only log a refusal.
    if matches!(
        nix::sys::resource::getrlimit(Resource::RLIMIT_CORE),
        Ok((0, 0))
    ) {
        tracing::debug!("core dumps already disabled");
    } else {
        match setrlimit(Resource::RLIMIT_CORE, 0, 0) {
            Ok(()) => tracing::debug!("core dumps disabled (RLIMIT_CORE = 0)"),
            Err(e) => tracing::warn!(error = %e, "could not disable core dumps"),
        }
    }
    match nix::sys::prctl::set_dumpable(false) {
        Ok(()) => tracing::debug!("process marked non-dumpable"),
        Err(e) => tracing::warn!(error = %e, "could not mark the process non-dumpable"),
    }
    // A write past RLIMIT_FSIZE (systemd's LimitFSIZE=, a quota) must fail
    // with EFBIG, which the store and the audit spool handle like a full
    // disk, instead of killing the daemon with SIGXFSZ.
    // SAFETY: SIG_IGN installs no handler code.
    match unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    } {
        Ok(_) => tracing::debug!("SIGXFSZ ignored: oversized writes fail with EFBIG"),
        Err(e) => tracing::warn!(error = %e, "could not ignore SIGXFSZ"),
    }
}

/// Tells systemd (when run under it with Type=notify) that the daemon is
/// ready; a no-op elsewhere.
pub fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready])
    {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
}
