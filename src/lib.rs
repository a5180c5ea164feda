//! jwksd: a key-management daemon for OAuth clients that authenticate with
//! `private_key_jwt` (RFC 7523). It generates and rotates signing keys,
//! publishes their public halves as a JWKS, and signs client assertions for
//! local callers over a Unix socket. See DESIGN.md for the behaviour.

pub mod clock;
pub mod config;
pub mod jose;
pub mod keys;
pub mod policy;
pub mod seal;
pub mod secret;
pub mod types;
pub mod url;
