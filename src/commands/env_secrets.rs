//! What `main` takes out of the environment before any thread starts,
//! for the commands that need it.

use zeroize::Zeroizing;

use crate::keys::owner_file::take_env_secret;

/// The secrets the environment may hand the daemon, taken out of it by
/// `main` while it is the only thread.
#[derive(Default)]
pub struct EnvSecrets {
    /// `JWKSD_MASTER_KEY`.
    pub master_key: Option<Zeroizing<Vec<u8>>>,
    /// `JWKSD_PKCS11_PIN`, the PIN of every `[backends.NAME]` table that
    /// has no `pin_file`.
    pub pkcs11_pin: Option<Zeroizing<Vec<u8>>>,
}

impl EnvSecrets {
    /// Takes both variables out of the environment (see
    /// [`take_env_secret`]); call it before any other thread starts.
    pub fn take() -> Self {
        EnvSecrets {
            master_key: take_env_secret(crate::keys::seal::MASTER_KEY_ENV),
            pkcs11_pin: take_env_secret(crate::config::backends::PKCS11_PIN_ENV),
        }
    }
}

impl std::fmt::Debug for EnvSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSecrets")
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "pkcs11_pin",
                &self.pkcs11_pin.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
