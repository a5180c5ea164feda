//! The TCP listeners: the public JWKS endpoint (`public`, over TLS with
//! `tls` when the config names a certificate) and the admin endpoint with
//! health, metrics and the status page (`admin`, `status`).

pub mod admin;
pub mod paths;
pub mod public;
pub mod status;
pub mod tls;
