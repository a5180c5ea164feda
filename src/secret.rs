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
        SecretBytes(bytes)
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
