//! Where private halves live (DESIGN §5): the seam between the lifecycle,
//! which decides when a key is made or destroyed, and the backends that do
//! it: `software` (aws-lc-rs keys, sealed into the store by the caller) and
//! PKCS#11 tokens (keys made and kept inside the token).
//!
//! Owns: routing generation and destruction to a policy's backend by name,
//! and finding a token by name for the keyring and health checks. Does not
//! own: sealing (`seal`), deciding when (`lifecycle`), or what the store
//! records about a key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::material::{KeyError, PublicKey};
use super::owner_file::{OwnerFileError, pin_from, read_pin_file};
use super::pkcs11::{Pkcs11Settings, Pkcs11Token};
use super::secret::SecretBytes;
use crate::config::backends::PKCS11_PIN_ENV;
use crate::config::daemon::Config;
use crate::config::policy::SOFTWARE_BACKEND;
use crate::types::{Alg, Kid};

/// Where a freshly made key's private half is.
pub enum PrivateHalf {
    /// PKCS#8 bytes, to be sealed at once (the `software` backend).
    Pkcs8(SecretBytes),
    /// Kept in a token; the store records this reference (the object's
    /// CKA_ID, which is the kid).
    InToken {
        /// The object's CKA_ID, as text.
        reference: String,
    },
}

/// A key a backend has just made, named by its kid.
pub struct MadeKey {
    /// The kid, computed from the public half (rule 5).
    pub kid: Kid,
    /// The public half, for the JWK.
    pub public: PublicKey,
    /// Where the private half is.
    pub private: PrivateHalf,
}

impl std::fmt::Debug for MadeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MadeKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Makes and destroys private halves, per backend name. The daemon uses
/// [`Backends`]; `jwksd simulate` uses public-only stand-ins, since a
/// simulated year of rotations needs kids and JWKS entries, never a
/// signature.
pub trait KeyBackends: Send + Sync + 'static {
    /// Makes one key pair in `backend`, named by `kid_for(public half)`.
    /// Blocking (RSA-4096 takes seconds, in a token possibly more): called
    /// on a low-priority thread of its own (`workers::background`).
    fn generate(
        &self,
        backend: &str,
        alg: Alg,
        rsa_bits: u32,
        kid_for: &dyn Fn(&PublicKey) -> Kid,
    ) -> Result<MadeKey, KeyError>;

    /// Destroys the private half of `kid` held in `backend`, once the store
    /// no longer lets it sign. For `software` there is nothing to do: the
    /// store erased the sealed blob in the same transaction. Idempotent.
    /// Blocking.
    fn destroy(&self, backend: &str, kid: &Kid) -> Result<(), KeyError>;
}

/// The daemon's backends: `software`, and one token per `[backends.NAME]`
/// with its `orphan_grace`.
#[derive(Default)]
pub struct Backends {
    tokens: BTreeMap<String, (Arc<Pkcs11Token>, Duration)>,
}

impl Backends {
    /// `software` and the given tokens (each under its own name), each with
    /// how long an object unknown to the store may stay in it.
    pub fn new(tokens: impl IntoIterator<Item = (Arc<Pkcs11Token>, Duration)>) -> Self {
        Backends {
            tokens: tokens
                .into_iter()
                .map(|(t, grace)| (t.name().to_owned(), (t, grace)))
                .collect(),
        }
    }

    /// The token named `name`, if configured.
    pub fn token(&self, name: &str) -> Option<&Arc<Pkcs11Token>> {
        self.tokens.get(name).map(|(t, _)| t)
    }

    /// Every configured token, in name order.
    pub fn tokens(&self) -> impl Iterator<Item = &Arc<Pkcs11Token>> {
        self.tokens.values().map(|(t, _)| t)
    }

    /// Every configured token with its `orphan_grace`, in name order.
    pub fn tokens_with_grace(&self) -> impl Iterator<Item = (&Arc<Pkcs11Token>, Duration)> {
        self.tokens.values().map(|(t, grace)| (t, *grace))
    }

    /// The names a policy may use besides `software`.
    pub fn names(&self) -> Vec<&str> {
        self.tokens.keys().map(String::as_str).collect()
    }

    fn token_or_err(&self, name: &str) -> Result<&Arc<Pkcs11Token>, KeyError> {
        self.token(name)
            .ok_or_else(|| KeyError::UnknownBackend(name.to_owned()))
    }
}

/// Why the backends of a config could not be set up. Never the PIN.
#[derive(Debug, thiserror::Error)]
pub enum BackendSetupError {
    /// The PIN file was refused (mode, size) or could not be read.
    #[error("backends.{name}.pin_file: {source}")]
    PinFile {
        name: String,
        source: OwnerFileError,
    },
    /// Neither a PIN file nor the environment variable.
    #[error(
        "{}: backends.{name}: no PIN: set pin_file (a file only jwksd's user may read) or the environment variable {PKCS11_PIN_ENV}",
        file.display()
    )]
    NoPin { file: PathBuf, name: String },
}

impl Backends {
    /// `software` and one token per `[backends.NAME]` table of `config`,
    /// each PIN read now: from `pin_file`, else from `pin_env` (what
    /// `JWKSD_PKCS11_PIN` held). Nothing connects yet: a token out of
    /// reach at start is retried, not fatal (signing on it answers 503,
    /// the JWKS is served).
    pub fn from_config(config: &Config, pin_env: Option<&[u8]>) -> Result<Self, BackendSetupError> {
        let mut tokens = Vec::new();
        for table in &config.backends {
            let p = &table.pkcs11;
            let pin = match (&p.pin_file, pin_env) {
                (Some(file), _) => {
                    read_pin_file(file).map_err(|source| BackendSetupError::PinFile {
                        name: table.name.clone(),
                        source,
                    })?
                }
                (None, Some(pin)) => pin_from(pin),
                (None, None) => {
                    return Err(BackendSetupError::NoPin {
                        file: config.file.clone(),
                        name: table.name.clone(),
                    });
                }
            };
            let token = Arc::new(Pkcs11Token::new(Pkcs11Settings {
                name: table.name.clone(),
                module: p.module.clone(),
                token: p.token.clone(),
                pin,
                pin_file: p.pin_file.clone(),
                sessions: p.sessions,
            }));
            if p.orphan_grace < Duration::from_secs(60) {
                tracing::warn!(
                    backend = %table.name, orphan_grace_s = p.orphan_grace.as_secs(),
                    "orphan_grace under a minute: a key another replica has just generated in a slow token may be destroyed before it is recorded (the default is 15m)"
                );
            }
            tokens.push((token, p.orphan_grace));
        }
        Ok(Backends::new(tokens))
    }
}

impl KeyBackends for Backends {
    fn generate(
        &self,
        backend: &str,
        alg: Alg,
        rsa_bits: u32,
        kid_for: &dyn Fn(&PublicKey) -> Kid,
    ) -> Result<MadeKey, KeyError> {
        if backend == SOFTWARE_BACKEND {
            let generated = super::signing::generate(alg, rsa_bits)?;
            return Ok(MadeKey {
                kid: kid_for(&generated.public),
                public: generated.public,
                private: PrivateHalf::Pkcs8(generated.pkcs8),
            });
        }
        let (kid, public) = self
            .token_or_err(backend)?
            .generate(alg, rsa_bits, kid_for)?;
        Ok(MadeKey {
            private: PrivateHalf::InToken {
                reference: kid.to_string(),
            },
            kid,
            public,
        })
    }

    fn destroy(&self, backend: &str, kid: &Kid) -> Result<(), KeyError> {
        if backend == SOFTWARE_BACKEND {
            return Ok(());
        }
        self.token_or_err(backend)?.destroy(kid)?;
        Ok(())
    }
}
