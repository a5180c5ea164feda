//! `SecretBytes`: the one container for secret key material (PKCS#8 private
//! keys, the master key).
//!
//! Owns: zeroizing the bytes on drop and keeping them out of `Debug` output.
//! Does not own: where the bytes come from or go to (see `keys` and `seal`).
//! There is deliberately no `Display`, `Serialize`, `Clone` or `PartialEq`:
//! a secret leaves this type only through [`SecretBytes::expose`], so every
//! place that reads one is easy to find.

use std::fmt;

use zeroize::Zeroizing;

/// Secret bytes, zeroized (whole allocation) when dropped.
///
/// `Debug` prints only the length: `SecretBytes(48 bytes, redacted)`.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes` without copying them, so no unzeroized copy
    /// is left behind.
    pub fn new(bytes: Vec<u8>) -> Self {
        lock_in_memory(&bytes);
        SecretBytes(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret. The caller remains responsible for
    /// zeroizing its own copy.
    pub fn copy_from(bytes: &[u8]) -> Self {
        SecretBytes::new(bytes.to_vec())
    }

    /// The secret itself. Every call site is a place where key material is
    /// handled: keep them few and never log what this returns.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(bytes: Zeroizing<Vec<u8>>) -> Self {
        lock_in_memory(&bytes);
        SecretBytes(bytes)
    }
}

/// Best effort: keeps the pages holding a secret out of swap (mlock).
///
/// The pages are never unlocked: mlock does not count, so unlocking on drop
/// would also unlock another secret sharing the page. Locked memory is
/// bounded by RLIMIT_MEMLOCK; once it is reached (or where mlock is not
/// allowed) this logs once and goes on: the bytes are still zeroized on drop
/// and core dumps are off (see `hygiene`).
fn lock_in_memory(bytes: &[u8]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(ptr) = std::ptr::NonNull::new(bytes.as_ptr() as *mut std::ffi::c_void) else {
        return;
    };
    if bytes.is_empty() {
        return;
    }
    // SAFETY: mlock only changes the paging of the range [ptr, ptr+len),
    // which is memory this process owns (the Vec's live buffer); it neither
    // reads nor writes it.
    let locked = unsafe { nix::sys::mman::mlock(ptr, bytes.len()) };
    if let Err(e) = locked
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "cannot lock key material in memory (mlock; RLIMIT_MEMLOCK?): it may reach swap; disable or encrypt swap");
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_only_the_length() {
        let secret = SecretBytes::new(vec![0xAB; 32]);
        let shown = format!("{secret:?}");
        assert_eq!(shown, "SecretBytes(32 bytes, redacted)");
        assert!(!shown.to_lowercase().contains("abab"));
        assert!(!shown.contains("171"));
    }

    #[test]
    fn expose_returns_the_bytes() {
        let secret = SecretBytes::copy_from(b"key material");
        assert_eq!(secret.expose(), b"key material");
        assert_eq!(secret.len(), 12);
        assert!(!secret.is_empty());
    }
}
