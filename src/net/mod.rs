//! The one accept loop every listener runs (public over TLS or plain,
//! admin, Unix socket): a bound on open connections, a deadline for request
//! headers (slowloris), an idle bound for HTTP/2, a lingering close (so
//! that a client always reads the answer it was sent), and a graceful stop.
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

mod limits;
pub mod linger;
mod listener;
pub mod prepare;
mod serve;
#[cfg(test)]
mod tests;

pub use limits::Limits;
pub use listener::Listener;
pub use prepare::{Plain, Prepare, Prepared, Protocol};
pub use serve::serve;
