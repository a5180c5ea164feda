//! jwksd: a key-management daemon for OAuth clients that authenticate with
//! `private_key_jwt` (RFC 7523). It generates and rotates signing keys,
//! publishes their public halves as a JWKS, and signs client assertions for
//! local callers over a Unix socket. See DESIGN.md for the behaviour and the
//! README's "Architecture" section for how the folders fit together.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod http;
pub mod jose;
pub mod keyring;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod net;
pub mod socket;
pub mod state;
pub mod store;
pub mod timeline;
pub mod tokens;
pub mod types;
pub mod workers;
