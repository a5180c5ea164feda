//! Binding the Unix socket: parent directory (refused where others could
//! swap the socket for a symlink), stale socket replacement, mode and
//! group (set through the bound file, never through the path again).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path}: another jwksd is listening there")]
    InUse { path: PathBuf },
    #[error("socket {path}: exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("socket {path}: unknown group {group:?} (server.socket_group)")]
    UnknownGroup { path: PathBuf, group: String },
    #[error("socket {path}: was replaced by something else while it was being set up")]
    Replaced { path: PathBuf },
    #[error("socket {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
}

/// Binds `path` with `mode` and group `group` (default: the daemon's own
/// group). A socket file left by a killed daemon is replaced; a live one is
/// not.
pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, SocketError> {
    bind_then(path, mode, group, || {})
}

/// [`bind`], running `after_bind` between the bind and setting the mode:
/// where a test puts what an attacker would do in that window.
fn bind_then(
    path: &Path,
    mode: u32,
    group: Option<&str>,
    after_bind: impl FnOnce(),
) -> Result<UnixListener, SocketError> {
    let io_err = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| SocketError::Io {
            path,
            action,
            source,
        }
    };
    let gid = match group {
        Some(name) => {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| SocketError::UnknownGroup {
                    path: path.to_path_buf(),
                    group: name.to_owned(),
                })?
                .gid
        }
        None => nix::unistd::getegid(),
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err("create parent directory"))?;
    warn_if_others_may_replace(path, dir);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Live if something accepts a connection; stale otherwise.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            tracing::info!(path = %path.display(), "replacing stale socket file");
            std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect")(e)),
    }
    // The process umask (0077, set in main) makes the socket private from
    // the moment it exists; it is then opened up to exactly `mode`.
    let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
    after_bind();
    // Mode and group go to the file just bound, never to whatever the path
    // names by then: it is opened without following a symlink, checked to
    // be a socket of ours, and changed through that open file. (fchmod on
    // the listening socket itself would not touch the file.)
    let node = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open after bind"))?;
    let meta = node.metadata().map_err(io_err("inspect after bind"))?;
    if !meta.file_type().is_socket() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(SocketError::Replaced {
            path: path.to_path_buf(),
        });
    }
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", node.as_raw_fd()));
    std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set mode"))?;
    std::os::unix::fs::chown(&by_fd, None, Some(gid.as_raw())).map_err(io_err("set group"))?;
    Ok(listener)
}

/// Whoever may rename or delete files in the socket's directory can take
/// the socket away, or put their own in its place, once it is bound (the
/// mode and group above are safe from them: they go through the bound
/// file). Not refused, since a Kubernetes emptyDir shared with the app
/// container is world-writable; said at start so that an operator who
/// can choose the directory does.
fn warn_if_others_may_replace(path: &Path, dir: &Path) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let (mode, uid) = (meta.mode() & 0o7777, meta.uid());
    let foreign = uid != 0 && uid != nix::unistd::geteuid().as_raw();
    let open = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if foreign || open {
        tracing::warn!(
            socket = %path.display(),
            dir = %dir.display(),
            mode = format!("{mode:04o}"),
            owner_uid = uid,
            "others may replace the socket in its directory (owned by another user, or writable by group or others without the sticky bit): prefer a directory only the daemon's user can write"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Someone who can write the socket's directory swaps the freshly
    /// bound socket for a symlink to a private file of the daemon's (the
    /// master key, say) before its mode is set: the file keeps its mode
    /// and the bind is refused.
    #[tokio::test]
    async fn a_socket_swapped_for_a_symlink_after_bind_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, victim) = (dir.path().join("s.sock"), dir.path().join("master.key"));
        std::fs::write(&victim, "secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let swap = || {
            std::fs::remove_file(&socket).unwrap();
            std::os::unix::fs::symlink(&victim, &socket).unwrap();
        };
        let err = bind_then(&socket, 0o660, None, swap).unwrap_err();
        assert!(matches!(err, SocketError::Replaced { .. }), "{err}");
        let mode = std::fs::metadata(&victim).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the symlink's target was changed");
    }

    #[tokio::test]
    async fn the_bound_socket_gets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let _listener = bind(&socket, 0o640, None).unwrap();
        let meta = std::fs::symlink_metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o640);
    }
}
