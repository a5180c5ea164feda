//! Binding the Unix socket: parent directory, stale socket replacement,
//! mode and group.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("create parent directory"))?;
    }
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set mode"))?;
    if let Err(e) = nix::unistd::chown(path, None, Some(gid)) {
        return Err(io_err("set group")(io::Error::from(e)));
    }
    Ok(listener)
}
