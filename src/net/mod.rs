//! The one accept loop every listener runs (public over TLS or plain,
//! admin, Unix socket): a bound on open connections, a deadline for request
//! headers (slowloris), and a graceful stop.
//!
//! Owns accepting, the connection bound, the HTTP protocol settings and the
//! shutdown sequence. It does not own what differs between listeners: that
//! is a [`Prepare`] step run on each accepted connection before HTTP is
//! spoken (the TLS handshake in `http::tls`, the kernel peer credentials in
//! `socket`, nothing for plain TCP). It knows hyper, tokio and the axum
//! `Router`, nothing of jwksd's domain.
//!
//! Written with hyper-util rather than `axum::serve` because the latter
//! offers neither a connection bound nor a header timeout.

mod listener;
mod prepare;
mod serve;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use listener::Listener;
pub use prepare::{Plain, Prepare, Prepared, Protocol};
pub use serve::serve;

/// Bounds of one listener; every listener gets its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most (handshaking ones included); further
    /// clients wait in the kernel's backlog until one closes. Default 1024
    /// (`server.max_connections`).
    pub max_connections: usize,
    /// Time an HTTP/1.1 client has to send a request's headers, from the
    /// moment the connection is ready for HTTP and again between keep-alive
    /// requests; a slower one is disconnected. Default 30 s
    /// (`server.header_timeout`).
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight before closing the
    /// connections still open. Default 10 s.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }
}
