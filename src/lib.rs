//! jwksd: a key-management daemon for OAuth clients that authenticate with
//! `private_key_jwt` (RFC 7523). It generates and rotates signing keys,
//! publishes their public halves as a JWKS, and signs client assertions for
//! local callers over a Unix socket. See DESIGN.md for the behaviour.
//!
//! Layout: `config`/`policy` turn files into validated values; `keys`,
//! `jose` and `seal` are the crypto (aws-lc-rs lives only there);
//! `lifecycle` decides, `scheduler` carries out; `store` persists;
//! `keyring` is what is served from memory; `http` and `socket` answer.

pub mod audit;
pub mod auditor;
pub mod background;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod http;
pub mod hygiene;
pub mod init;
pub mod jose;
pub mod keyring;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod policy;
pub mod reseal;
pub mod scheduler;
pub mod seal;
pub mod secret;
pub mod signing_pool;
pub mod simulate;
pub mod socket;
pub mod store;
pub mod types;
pub mod url;
