//! The PKCS#11 token driver: private halves generated and kept inside a
//! token (an HSM, or SoftHSM in tests), used to sign without ever leaving
//! it (DESIGN.md §5).
//!
//! Owns: one [`Pkcs11Token`] per configured backend, with its lazy,
//! retried connection (`connection`, `module`, `pool`), key generation
//! labelled by kid (`generate`), JOSE signing (`sign`), finding, listing and
//! destroying jwksd's objects (`objects`) and `jwksd backend check`
//! (`check`). Errors are [`Pkcs11Error`], one line naming the backend and the
//! `CKR_*` code.
//! Does not own: the config (`[backends.NAME]` is parsed and the PIN read
//! before a [`Pkcs11Settings`] is built), which key signs, or the store's
//! reference to a key (backend name and CKA_ID = kid).
//!
//! Every call blocks the calling thread on the token: callers run them on a
//! blocking thread. A `Pkcs11Token` is `Send + Sync`; calls from many
//! threads share a pool of sessions.

mod check;
pub mod connection;
pub mod error;
mod generate;
mod module;
mod objects;
mod pool;
pub mod settings;
mod sign;

pub use check::{Check, CheckReport};
pub use connection::Pkcs11Token;
pub use error::Pkcs11Error;
pub use settings::{Health, Pkcs11Settings, PrivateAttributes, TokenChoice, TokenObject};

#[cfg(test)]
mod tests;
