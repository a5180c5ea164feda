//! Secrets handed to the daemon from outside: a small file that only its
//! owner may read (the master key, a PKCS#11 PIN), or an environment
//! variable that is scrubbed once taken (see `commands::EnvSecrets`).
//!
//! Owns: the mode check on the opened file, reading without leaving an
//! unzeroized copy, and taking an environment variable out of the process.
//! Does not own: what the bytes mean (`seal` parses a master key, the
//! PKCS#11 backend uses a PIN as it is).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::secret::SecretBytes;

/// Why a secret file was refused. `what` names the secret (`master key`,
/// `PKCS#11 PIN`); no message contains the file's contents.
#[derive(Debug, thiserror::Error)]
pub enum OwnerFileError {
    /// The file's mode lets group or others read or write it.
    #[error(
        "{}: mode {mode:04o} lets group or others access the {what}; refusing it. Fix with `chmod 600 {}`",
        path.display(), path.display()
    )]
    Permissions {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    /// Not a regular file, or larger than any such secret.
    #[error("{}: not a {what} file (must be a regular file of at most {max_len} bytes)", path.display())]
    NotAFile {
        what: &'static str,
        path: PathBuf,
        max_len: u64,
    },
    /// The file could not be opened or read.
    #[error("{}: cannot read the {what} file: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Reads `path`, a secret (`what`) of at most `max_len` bytes that only its
/// owner may access: a mode with any group or other bit (`mode & 0o077`) is
/// refused, naming the fix. The mode is checked on the opened file, so it
/// is the file actually read.
pub fn read_owner_only(
    path: &Path,
    what: &'static str,
    max_len: u64,
) -> Result<Zeroizing<Vec<u8>>, OwnerFileError> {
    let read_error = |source| OwnerFileError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() || meta.len() > max_len {
        return Err(OwnerFileError::NotAFile {
            what,
            path: path.to_owned(),
            max_len,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(OwnerFileError::Permissions {
            what,
            path: path.to_owned(),
            mode,
        });
    }
    // Capacity for the whole file up front, so reading never reallocates
    // and leaves an unzeroized copy behind.
    let mut bytes = Zeroizing::new(Vec::with_capacity(max_len as usize + 1));
    file.take(max_len + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(bytes)
}

/// The most bytes a PIN file may hold: far more than any token's PIN.
pub const MAX_PIN_FILE_LEN: u64 = 256;

/// A PKCS#11 PIN file, read as [`read_owner_only`] reads a secret: the
/// whole file less one trailing newline (`\n` or `\r\n`, as editors and
/// `echo` leave), so the PIN itself may hold any other byte.
pub fn read_pin_file(path: &Path) -> Result<SecretBytes, OwnerFileError> {
    let bytes = read_owner_only(path, "PKCS#11 PIN", MAX_PIN_FILE_LEN)?;
    Ok(pin_from(&bytes))
}

/// A PIN as handed over (a file's or an environment variable's bytes):
/// less one trailing newline.
pub fn pin_from(bytes: &[u8]) -> SecretBytes {
    let pin = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let pin = if pin.len() < bytes.len() {
        pin.strip_suffix(b"\r").unwrap_or(pin)
    } else {
        pin
    };
    SecretBytes::copy_from(pin)
}

/// Takes the secret in environment variable `name`, if set: the value is
/// copied into memory that is zeroized on drop, its bytes in the
/// environment block the kernel shows in `/proc/PID/environ` (the process's
/// initial stack, which removing a variable leaves as it is) are
/// overwritten, and the variable is removed.
///
/// Call it before any other thread starts: the environment has no lock
/// that threads reading it (getenv in C libraries) would take.
pub fn take_env_secret(name: &'static str) -> Option<Zeroizing<Vec<u8>>> {
    let value = Zeroizing::new(std::env::var_os(name)?.into_vec());
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `main` calls this before the runtime or any other thread
    // exists, so nothing reads or changes the environment meanwhile.
    // `getenv` returns the value's bytes where they stand (in the initial
    // block for a variable the process was started with), NUL-terminated;
    // they are overwritten within their length, then the variable removed.
    unsafe {
        let at = libc::getenv(c_name.as_ptr());
        if !at.is_null() {
            std::ptr::write_bytes(at, 0, libc::strlen(at));
        }
        std::env::remove_var(name);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_file_others_may_read_is_refused_naming_the_fix_and_an_owner_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        fs::write(&path, "1234\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_owner_only(&path, "PKCS#11 PIN", 256).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("mode 0640"), "{msg}");
        assert!(msg.contains("PKCS#11 PIN"), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(!msg.contains("1234"), "{msg}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            &read_owner_only(&path, "PKCS#11 PIN", 256).unwrap()[..],
            b"1234\n"
        );
        fs::write(&path, vec![b'1'; 300]).unwrap();
        let msg = read_owner_only(&path, "PKCS#11 PIN", 256)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("at most 256 bytes"), "{msg}");
    }

    #[test]
    fn a_pin_loses_one_trailing_newline_and_nothing_else() {
        assert_eq!(pin_from(b"1234\n").expose(), b"1234");
        assert_eq!(pin_from(b"1234\r\n").expose(), b"1234");
        assert_eq!(pin_from(b"1234 \n\n").expose(), b"1234 \n");
        assert_eq!(pin_from(b"12\r34").expose(), b"12\r34");
        assert_eq!(pin_from(b" 1234 ").expose(), b" 1234 ");
    }
}
