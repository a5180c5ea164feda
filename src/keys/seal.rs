//! At-rest encryption of private keys under the master key (DESIGN §4).
//!
//! Owns: loading the master key (env `JWKSD_MASTER_KEY` or a file that only
//! its owner can read), writing a new master key file, sealing PKCS#8 keys
//! with AES-256-GCM bound to their kid, opening them again, and the public
//! master key fingerprint the store keeps to detect a daemon started with
//! the wrong key.
//! Does not own: storing sealed blobs (the store), key generation (`keys`),
//! or deciding when a private key is destroyed (the lifecycle).
//!
//! Sealed format, version 1: `0x01 || nonce (12 bytes) || ciphertext || tag
//! (16 bytes)`, with associated data `"jwksd-seal-v1:" + kid`, so a blob
//! copied onto another key's row does not open. Nonces are random (96 bits);
//! one master key seals a few keys a month, far below the 2^32 random-nonce
//! limit for AES-GCM.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::{fmt, fs};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::owner_file::{OwnerFileError, read_owner_only};
use super::secret::SecretBytes;
use super::signing::fill_random;
use crate::types::Kid;

/// Length of the master key in bytes (AES-256).
pub const MASTER_KEY_LEN: usize = 32;

/// Environment variable that, when set, holds the master key (base64) and
/// takes precedence over the key file.
pub const MASTER_KEY_ENV: &str = "JWKSD_MASTER_KEY";

/// The only sealed format version this build writes and reads.
pub const SEAL_VERSION: u8 = 1;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
/// Shortest possible sealed blob: header and tag around an empty plaintext.
pub const MIN_SEALED_LEN: usize = HEADER_LEN + TAG_LEN;
const AAD_PREFIX: &[u8] = b"jwksd-seal-v1:";
const FINGERPRINT_DOMAIN: &[u8] = b"jwksd master key fingerprint v1\0";
/// Length of [`MasterKey::fingerprint`] in characters (48 bits).
pub const FINGERPRINT_LEN: usize = 8;
/// A key file is 44 base64 characters plus whitespace; anything this large
/// is not a master key.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Why the master key could not be loaded or written, or a key not be
/// sealed or opened. No message contains key bytes or key text.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The master key text is not standard base64 (with or without padding).
    #[error(
        "{origin}: the master key is not valid base64; expected the standard base64 of 32 random bytes (`jwksd init` writes one)"
    )]
    NotBase64 {
        /// Where the key came from: a path, `JWKSD_MASTER_KEY`, or `master key`.
        origin: String,
    },
    /// The master key decodes to something other than 32 bytes.
    #[error("{origin}: the master key decodes to {len} bytes; it must be exactly 32")]
    WrongLength {
        /// Where the key came from.
        origin: String,
        /// Decoded length in bytes.
        len: usize,
    },
    /// The key file's mode lets group or others read or write it.
    #[error(
        "{}: mode {mode:04o} lets group or others access the master key; refusing it. Fix with `chmod 600 {}`",
        path.display(), path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not a regular file, or far too large to be a key.
    #[error("{}: not a master key file (must be a regular file of a few dozen bytes)", path.display())]
    NotAKeyFile {
        /// The path given.
        path: PathBuf,
    },
    /// The key file could not be opened or read.
    #[error("{}: cannot read the master key file: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Neither `JWKSD_MASTER_KEY` nor a key file was given.
    #[error(
        "no master key: set JWKSD_MASTER_KEY or [seal] master_key_file (`jwksd init` writes one)"
    )]
    Missing,
    /// `write_new_master_key_file` found a file already there; it never
    /// overwrites one (that would orphan every sealed key).
    #[error("{}: already exists; refusing to overwrite a master key", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A new key file could not be created or written (it is removed again).
    #[error("{}: cannot write the master key file: {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The crypto backend failed to set up or run AES-256-GCM for sealing.
    #[error("sealing the private key of {kid} failed in the crypto backend")]
    Seal {
        /// Kid of the key being sealed.
        kid: Kid,
    },
    /// The sealed blob is shorter than header plus tag: truncated in storage.
    #[error(
        "sealed private key of {kid} is {len} bytes, shorter than the {MIN_SEALED_LEN}-byte minimum: truncated"
    )]
    Truncated {
        /// Kid of the key.
        kid: Kid,
        /// Length found.
        len: usize,
    },
    /// The sealed blob has a format version this build does not know.
    #[error(
        "sealed private key of {kid} has format version {version}; this jwksd reads version {SEAL_VERSION} (written by a newer jwksd, or damaged)"
    )]
    UnknownVersion {
        /// Kid of the key.
        kid: Kid,
        /// Version byte found.
        version: u8,
    },
    /// AES-GCM authentication failed. GCM cannot tell these causes apart:
    /// a different master key (compare [`MasterKey::fingerprint`] with the
    /// one the store recorded), a blob stored under another kid, or modified
    /// bytes.
    #[error(
        "sealed private key of {kid} does not authenticate: wrong master key, sealed for another kid, or modified in storage"
    )]
    Unauthentic {
        /// Kid of the key.
        kid: Kid,
    },
}

/// The 32-byte AES-256 master key that seals private keys at rest.
///
/// `Debug` prints only the public fingerprint. Not `Clone`: share it by
/// reference or `Arc`.
pub struct MasterKey {
    key: SecretBytes,
}

impl MasterKey {
    /// Parses the base64 text of a master key: standard alphabet, padding
    /// optional, surrounding whitespace ignored; it must decode to exactly
    /// 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        Self::parse(text, "master key")
    }

    fn parse(text: &str, origin: &str) -> Result<Self, SealError> {
        let trimmed = text.trim();
        // Decode into a buffer we own and zeroize; decoding never needs more
        // than the input length, so it is never reallocated.
        let mut bytes = Zeroizing::new(Vec::with_capacity(trimmed.len()));
        STANDARD_PAD_INDIFFERENT
            .decode_vec(trimmed, &mut bytes)
            .map_err(|_| SealError::NotBase64 {
                origin: origin.to_owned(),
            })?;
        if bytes.len() != MASTER_KEY_LEN {
            return Err(SealError::WrongLength {
                origin: origin.to_owned(),
                len: bytes.len(),
            });
        }
        Ok(MasterKey {
            key: SecretBytes::from(bytes),
        })
    }

    /// Reads the master key from a file holding its base64 text.
    ///
    /// Refuses a file whose mode lets group or others in (`mode & 0o077 !=
    /// 0`), naming the path, the mode and the fix (`chmod 600`). The mode is
    /// checked on the opened file, so it is the file actually read.
    pub fn load_file(path: &Path) -> Result<Self, SealError> {
        let text = read_owner_only(path, "master key", MAX_KEY_FILE_LEN).map_err(|e| match e {
            OwnerFileError::Permissions { path, mode, .. } => SealError::Permissions { path, mode },
            OwnerFileError::NotAFile { path, .. } => SealError::NotAKeyFile { path },
            OwnerFileError::Read { path, source, .. } => SealError::Read { path, source },
        })?;
        let origin = path.display().to_string();
        let text = std::str::from_utf8(&text).map_err(|_| SealError::NotBase64 {
            origin: origin.clone(),
        })?;
        Self::parse(text, &origin)
    }

    /// The master key from `env` (the `JWKSD_MASTER_KEY` value that
    /// `commands::EnvSecrets` took) if that is set, even to an invalid
    /// value, which is an error rather than a silent fallback; else from
    /// `file`; [`SealError::Missing`] if neither.
    ///
    /// Prefer the file: an environment variable is visible to anything that
    /// can read this process's environment until it is taken.
    pub fn load(env: Option<&[u8]>, file: Option<&Path>) -> Result<Self, SealError> {
        match (env, file) {
            (Some(value), _) => {
                let text = std::str::from_utf8(value).map_err(|_| SealError::NotBase64 {
                    origin: MASTER_KEY_ENV.to_owned(),
                })?;
                Self::parse(text, MASTER_KEY_ENV)
            }
            (None, Some(path)) => Self::load_file(path),
            (None, None) => Err(SealError::Missing),
        }
    }

    /// A new random master key and its base64 text (standard, padded, no
    /// newline) for the key file. The text is zeroized when dropped.
    pub fn generate() -> Result<(Self, Zeroizing<String>), SealError> {
        let mut raw = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        fill_random(&mut raw[..]).map_err(|_| SealError::Random)?;
        let text = Zeroizing::new(STANDARD.encode(&raw[..]));
        let key = MasterKey {
            key: SecretBytes::copy_from(&raw[..]),
        };
        Ok((key, text))
    }

    /// Seals a private key for `kid`: AES-256-GCM under a fresh random
    /// 96-bit nonce, associated data `"jwksd-seal-v1:" + kid`. Output:
    /// version byte (1) || nonce || ciphertext || tag.
    pub fn seal(&self, kid: &Kid, plaintext: &SecretBytes) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce).map_err(|_| SealError::Random)?;
        let seal_error = || SealError::Seal { kid: kid.clone() };
        let key = self.aead_key().ok_or_else(seal_error)?;

        // The buffer holds plaintext until it is encrypted in place: zeroize
        // it if anything fails. Full capacity up front: no reallocation.
        let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN));
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext.expose());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kid)),
                &mut out[HEADER_LEN..],
            )
            .map_err(|_| seal_error())?;
        out.extend_from_slice(tag.as_ref());
        Ok(std::mem::take(&mut *out))
    }

    /// Opens a blob made by [`MasterKey::seal`] for the same `kid`.
    ///
    /// Errors: [`SealError::Truncated`], [`SealError::UnknownVersion`], or
    /// [`SealError::Unauthentic`] for a wrong master key, a wrong kid or any
    /// modified byte.
    pub fn open(&self, kid: &Kid, sealed: &[u8]) -> Result<SecretBytes, SealError> {
        let truncated = || SealError::Truncated {
            kid: kid.clone(),
            len: sealed.len(),
        };
        let version = *sealed.first().ok_or_else(truncated)?;
        if version != SEAL_VERSION {
            return Err(SealError::UnknownVersion {
                kid: kid.clone(),
                version,
            });
        }
        if sealed.len() < MIN_SEALED_LEN {
            return Err(truncated());
        }
        let unauthentic = || SealError::Unauthentic { kid: kid.clone() };
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[1..HEADER_LEN]).map_err(|_| unauthentic())?;
        let key = self.aead_key().ok_or_else(unauthentic)?;
        let mut buf = Zeroizing::new(sealed[HEADER_LEN..].to_vec());
        let len = key
            .open_in_place(nonce, Aad::from(aad(kid)), &mut buf[..])
            .map_err(|_| unauthentic())?
            .len();
        buf.truncate(len);
        Ok(SecretBytes::from(buf))
    }

    /// A short public fingerprint of the master key: the first 8 characters
    /// of base64url(SHA-256(domain || key)). The store records it so a
    /// daemon started with another master key is refused with a clear
    /// message; it reveals nothing usable about the 256-bit key.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(FINGERPRINT_DOMAIN);
        hash.update(self.key.expose());
        let mut text = URL_SAFE_NO_PAD.encode(hash.finalize());
        text.truncate(FINGERPRINT_LEN);
        text
    }

    /// A 32-byte key for another purpose, derived from the master key with
    /// HKDF-SHA-256 (RFC 5869; no salt, `label` as the info): each label
    /// gives an independent key, so a key derived for one job (the audit
    /// chain's MAC) reveals neither the master key nor any other derived key.
    pub fn derive(&self, label: &[u8]) -> SecretBytes {
        derive_key(self.key.expose(), label)
    }

    fn aead_key(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, self.key.expose())
            .ok()
            .map(LessSafeKey::new)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(fingerprint {}, redacted)", self.fingerprint())
    }
}

/// HKDF-SHA-256 of `secret` with `label` as the info, 32 bytes out.
pub(crate) fn derive_key(secret: &[u8], label: &[u8]) -> SecretBytes {
    let mut out = Zeroizing::new(vec![0u8; MASTER_KEY_LEN]);
    let info = [label];
    // Expanding 32 bytes from SHA-256 cannot fail: the only error is an
    // output longer than 255 blocks.
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(secret)
        .expand(&info, hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("HKDF-SHA-256 expands 32 bytes");
    SecretBytes::from(out)
}

fn aad(kid: &Kid) -> Vec<u8> {
    [AAD_PREFIX, kid.as_str().as_bytes()].concat()
}

/// Creates a new master key file at `path` holding the base64 of 32 random
/// bytes and a newline.
///
/// The file is created with mode 0600 from the start (never widened, then
/// narrowed) and `create_new`, so an existing file is never overwritten
/// ([`SealError::Exists`]). On a write error the partial file is removed.
pub fn write_new_master_key_file(path: &Path) -> Result<(), SealError> {
    let (_key, text) = MasterKey::generate()?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => SealError::Exists {
                path: path.to_owned(),
            },
            _ => SealError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(SealError::Write {
            path: path.to_owned(),
            source,
        });
    }
    // Make the new directory entry durable too; best effort, the file
    // itself is already synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use proptest::prelude::*;

    fn kid(s: &str) -> Kid {
        Kid::from_stored(s)
    }

    fn key_from(raw: [u8; 32]) -> MasterKey {
        MasterKey::from_base64(&STANDARD.encode(raw)).unwrap()
    }

    fn pkcs8_like() -> SecretBytes {
        SecretBytes::copy_from(b"0\x82\x01\x02 pretend this is a PKCS#8 private key")
    }

    fn write_key_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Renderings of secret bytes that must never appear in Debug or errors.
    fn renderings(secret: &[u8]) -> Vec<String> {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        vec![
            STANDARD.encode(secret),
            STANDARD.encode(&secret[..12]),
            URL_SAFE_NO_PAD.encode(secret),
            URL_SAFE_NO_PAD.encode(&secret[4..16]),
            hex.clone(),
            hex[..16].to_owned(),
            hex.to_uppercase(),
        ]
    }

    #[test]
    fn sealed_keys_open_again_with_the_same_master_key_and_kid() {
        let (master, _) = MasterKey::generate().unwrap();
        let secret = pkcs8_like();
        let sealed = master.seal(&kid("default-rs384-v1-abc"), &secret).unwrap();
        let opened = master.open(&kid("default-rs384-v1-abc"), &sealed).unwrap();
        assert_eq!(opened.expose(), secret.expose());
    }

    #[test]
    fn sealed_format_is_version_nonce_ciphertext_tag() {
        let (master, _) = MasterKey::generate().unwrap();
        let secret = pkcs8_like();
        let sealed = master.seal(&kid("k"), &secret).unwrap();
        assert_eq!(sealed[0], 1);
        assert_eq!(sealed.len(), 1 + 12 + secret.len() + 16);
        assert!(
            !sealed
                .windows(8)
                .any(|w| secret.expose().windows(8).any(|s| s == w)),
            "plaintext visible in the sealed blob"
        );
        let again = master.seal(&kid("k"), &secret).unwrap();
        assert_ne!(sealed[1..13], again[1..13], "nonce reused");
        assert_ne!(sealed, again);
    }

    #[test]
    fn another_master_key_cannot_open() {
        let (master, _) = MasterKey::generate().unwrap();
        let (other, _) = MasterKey::generate().unwrap();
        let sealed = master.seal(&kid("k"), &pkcs8_like()).unwrap();
        let err = other.open(&kid("k"), &sealed).unwrap_err();
        assert!(matches!(err, SealError::Unauthentic { .. }), "{err}");
        assert!(err.to_string().contains("wrong master key"));
        assert_ne!(master.fingerprint(), other.fingerprint());
    }

    #[test]
    fn a_blob_moved_to_another_kid_does_not_open() {
        let (master, _) = MasterKey::generate().unwrap();
        let sealed = master
            .seal(&kid("set-rs384-v1-aaaa"), &pkcs8_like())
            .unwrap();
        let err = master.open(&kid("set-rs384-v2-bbbb"), &sealed).unwrap_err();
        assert!(
            matches!(err, SealError::Unauthentic { ref kid } if kid.as_str() == "set-rs384-v2-bbbb")
        );
        assert!(err.to_string().contains("set-rs384-v2-bbbb"));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (master, _) = MasterKey::generate().unwrap();
        let sealed = master.seal(&kid("k"), &pkcs8_like()).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = master.open(&kid("k"), &bad).unwrap_err();
            if i == 0 {
                assert!(
                    matches!(err, SealError::UnknownVersion { version: 0, .. }),
                    "{err}"
                );
            } else {
                assert!(
                    matches!(err, SealError::Unauthentic { .. }),
                    "byte {i}: {err}"
                );
            }
        }
    }

    #[test]
    fn truncated_blobs_and_unknown_versions_are_named_as_such() {
        let (master, _) = MasterKey::generate().unwrap();
        let sealed = master.seal(&kid("k"), &pkcs8_like()).unwrap();
        for len in 0..MIN_SEALED_LEN {
            let err = master.open(&kid("k"), &sealed[..len]).unwrap_err();
            assert!(
                matches!(err, SealError::Truncated { len: l, .. } if l == len),
                "{err}"
            );
        }
        for len in MIN_SEALED_LEN..sealed.len() {
            let err = master.open(&kid("k"), &sealed[..len]).unwrap_err();
            assert!(matches!(err, SealError::Unauthentic { .. }), "{err}");
        }
        let mut v2 = sealed.clone();
        v2[0] = 2;
        let err = master.open(&kid("k"), &v2).unwrap_err();
        assert!(matches!(err, SealError::UnknownVersion { version: 2, .. }));
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn master_key_text_ignores_surrounding_whitespace_and_padding() {
        let raw = [7u8; 32];
        let padded = STANDARD.encode(raw);
        let unpadded = padded.trim_end_matches('=').to_owned();
        assert_ne!(padded, unpadded);
        let reference = key_from(raw).fingerprint();
        for text in [
            padded.clone(),
            unpadded,
            format!("  {padded}\n"),
            format!("\n\t{padded}\r\n\n"),
        ] {
            assert_eq!(
                MasterKey::from_base64(&text).unwrap().fingerprint(),
                reference
            );
        }
    }

    #[test]
    fn master_keys_of_the_wrong_length_or_not_base64_are_refused() {
        for (raw_len, expect) in [(31usize, 31usize), (33, 33), (16, 16), (0, 0)] {
            let text = STANDARD.encode(vec![5u8; raw_len]);
            let err = MasterKey::from_base64(&text).unwrap_err();
            assert!(
                matches!(err, SealError::WrongLength { len, .. } if len == expect),
                "{err}"
            );
            assert!(err.to_string().contains("exactly 32"));
            if !text.is_empty() {
                assert!(!err.to_string().contains(&text));
            }
        }
        let secretish = format!("{}!", &STANDARD.encode([9u8; 32])[..40]);
        let err = MasterKey::from_base64(&secretish).unwrap_err();
        assert!(matches!(err, SealError::NotBase64 { .. }));
        assert!(!format!("{err} {err:?}").contains(&secretish[..20]));
        // URL-safe alphabet is not the documented format.
        let urlsafe = URL_SAFE_NO_PAD.encode([0xFBu8; 32]);
        assert!(MasterKey::from_base64(&urlsafe).is_err());
    }

    #[test]
    fn master_key_file_readable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = STANDARD.encode([3u8; 32]);
        for mode in [0o644, 0o640, 0o604, 0o660, 0o620, 0o601] {
            let path = write_key_file(dir.path(), &format!("k{mode:o}"), &text, mode);
            let err = MasterKey::load_file(&path).unwrap_err();
            assert!(
                matches!(err, SealError::Permissions { mode: m, .. } if m == mode),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(!msg.contains(&text));
        }
    }

    #[test]
    fn master_key_file_with_mode_0600_or_0400_is_accepted_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [4u8; 32];
        let text = format!("\n  {}  \n\n", STANDARD.encode(raw));
        for mode in [0o600, 0o400] {
            let path = write_key_file(dir.path(), &format!("k{mode:o}"), &text, mode);
            let key = MasterKey::load_file(&path).unwrap();
            assert_eq!(key.fingerprint(), key_from(raw).fingerprint());
        }
    }

    #[test]
    fn bad_master_key_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let short = write_key_file(dir.path(), "short", &STANDARD.encode([1u8; 31]), 0o600);
        let err = MasterKey::load_file(&short).unwrap_err();
        assert!(matches!(err, SealError::WrongLength { len: 31, .. }));
        assert!(err.to_string().contains(&short.display().to_string()));

        let missing = dir.path().join("missing");
        let err = MasterKey::load_file(&missing).unwrap_err();
        assert!(matches!(err, SealError::Read { .. }));
        assert!(err.to_string().contains("missing"));

        let err = MasterKey::load_file(dir.path()).unwrap_err();
        assert!(matches!(err, SealError::NotAKeyFile { .. }), "{err}");

        let big = write_key_file(dir.path(), "big", &"A".repeat(5000), 0o600);
        assert!(matches!(
            MasterKey::load_file(&big),
            Err(SealError::NotAKeyFile { .. })
        ));
    }

    #[test]
    fn the_environment_wins_over_the_file_and_neither_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let from_file = [1u8; 32];
        let from_env = [2u8; 32];
        let path = write_key_file(dir.path(), "k", &STANDARD.encode(from_file), 0o600);
        let env = STANDARD.encode(from_env);

        let key = MasterKey::load(Some(env.as_bytes()), Some(&path)).unwrap();
        assert_eq!(key.fingerprint(), key_from(from_env).fingerprint());
        let key = MasterKey::load(None, Some(&path)).unwrap();
        assert_eq!(key.fingerprint(), key_from(from_file).fingerprint());
        assert!(matches!(
            MasterKey::load(None, None),
            Err(SealError::Missing)
        ));

        // A bad env value is an error, not a silent fallback to the file.
        let err = MasterKey::load(Some(b"short"), Some(&path)).unwrap_err();
        assert!(err.to_string().starts_with(MASTER_KEY_ENV), "{err}");
        let err = MasterKey::load(Some(&[0xff, 0xfe]), None).unwrap_err();
        assert!(matches!(err, SealError::NotBase64 { .. }));
    }

    #[test]
    fn new_master_key_files_are_0600_loadable_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        write_new_master_key_file(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let contents = fs::read_to_string(&path).unwrap();
        assert_eq!(contents.trim_end().len(), 44);
        assert!(contents.ends_with('\n'));
        let key = MasterKey::load_file(&path).unwrap();

        let err = write_new_master_key_file(&path).unwrap_err();
        assert!(matches!(err, SealError::Exists { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), contents);
        assert_eq!(
            MasterKey::load_file(&path).unwrap().fingerprint(),
            key.fingerprint()
        );

        let nowhere = dir.path().join("no/such/dir/master.key");
        assert!(matches!(
            write_new_master_key_file(&nowhere),
            Err(SealError::Write { .. })
        ));
    }

    #[test]
    fn generated_master_keys_are_random_and_their_text_loads_back() {
        let (a, text_a) = MasterKey::generate().unwrap();
        let (b, _) = MasterKey::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            MasterKey::from_base64(&text_a).unwrap().fingerprint(),
            a.fingerprint()
        );
        assert_eq!(format!("{text_a:?}"), "Zeroizing { .. }");
    }

    #[test]
    fn fingerprints_are_short_stable_and_reveal_no_key_bytes() {
        let raw = [0x5Au8; 32];
        let fp = key_from(raw).fingerprint();
        assert_eq!(fp.len(), FINGERPRINT_LEN);
        assert_eq!(key_from(raw).fingerprint(), fp);
        for rendering in renderings(&raw) {
            assert!(!rendering.contains(&fp));
        }
    }

    #[test]
    fn debug_and_errors_of_master_keys_hold_no_key_bytes() {
        let (master, text) = MasterKey::generate().unwrap();
        let raw = STANDARD.decode(text.as_bytes()).unwrap();
        let shown = format!("{master:?} {master:#?}");
        assert!(shown.contains("redacted"));
        assert!(shown.contains(&master.fingerprint()));
        for rendering in renderings(&raw) {
            assert!(!shown.contains(&rendering), "{shown} leaks {rendering}");
        }
        let sealed = master.seal(&kid("k"), &pkcs8_like()).unwrap();
        let (other, _) = MasterKey::generate().unwrap();
        let err = other.open(&kid("k"), &sealed).unwrap_err();
        let text = format!("{err} {err:?}");
        for rendering in renderings(&raw)
            .into_iter()
            .chain(renderings(pkcs8_like().expose()))
        {
            assert!(!text.contains(&rendering));
        }
    }

    #[test]
    fn a_generated_key_sealed_and_opened_still_signs() {
        let (master, _) = MasterKey::generate().unwrap();
        let generated = crate::keys::generate(crate::types::Alg::Es384, 0).unwrap();
        let kid = kid("default-es384-v1-abcdefgh");
        let sealed = master.seal(&kid, &generated.pkcs8).unwrap();
        let opened = master.open(&kid, &sealed).unwrap();
        let key = crate::keys::SigningKey::from_pkcs8(generated.alg, kid, &opened).unwrap();
        assert_eq!(key.public(), &generated.public);
        assert_eq!(
            key.sign(b"m").unwrap().len(),
            crate::keys::ES384_SIGNATURE_LEN
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_open_roundtrips_and_rejects_any_single_flip(
            plaintext in proptest::collection::vec(any::<u8>(), 0..600),
            kid_text in "[a-z0-9_]{1,20}-(rs|es)384-v[0-9]{1,3}-[A-Za-z0-9_-]{8}",
            flip_at in any::<prop::sample::Index>(),
            flip_bits in 1u8..=255,
        ) {
            let master = key_from([0x11; 32]);
            let kid = Kid::from_stored(kid_text);
            let secret = SecretBytes::copy_from(&plaintext);
            let sealed = master.seal(&kid, &secret).unwrap();
            let opened = master.open(&kid, &sealed).unwrap();
            prop_assert_eq!(opened.expose(), &plaintext[..]);
            let mut bad = sealed.clone();
            bad[flip_at.index(sealed.len())] ^= flip_bits;
            prop_assert!(master.open(&kid, &bad).is_err());
        }
    }
}
