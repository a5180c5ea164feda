//! The seam between the accept loop and a listener's own step: what happens
//! to a connection between accept and HTTP.

use std::future::Future;
use std::io;

use axum::http::Extensions;
use tokio::io::{AsyncRead, AsyncWrite};

/// A listener's own step on each accepted connection, run under the
/// connection bound and before HTTP is spoken: a TLS handshake, reading
/// the peer's credentials, or nothing.
pub trait Prepare<S>: Send + Sync + 'static {
    /// The stream HTTP is spoken on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Turns an accepted connection into one ready for HTTP. An error drops
    /// the connection; it is logged at debug level (scanners are noisy), so
    /// it should say what failed.
    fn prepare(&self, stream: S) -> impl Future<Output = io::Result<Prepared<Self::Io>>> + Send;
}

/// A connection ready for HTTP.
#[derive(Debug)]
pub struct Prepared<I> {
    /// The stream to speak HTTP on.
    pub io: I,
    /// Which HTTP version to speak on it.
    pub protocol: Protocol,
    /// Added to every request of this connection (e.g. who the peer is,
    /// read by axum's `ConnectInfo` extractor).
    pub extensions: Extensions,
}

impl<I> Prepared<I> {
    /// HTTP/1.1 on `io`, with no extensions.
    pub fn http1(io: I) -> Self {
        Prepared {
            io,
            protocol: Protocol::Http1,
            extensions: Extensions::new(),
        }
    }
}

/// The HTTP version spoken on a connection. There is no guessing from the
/// first bytes: HTTP/2 is spoken only where TLS negotiated it (ALPN), so no
/// connection waits for a preface without a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0), with the header timeout.
    Http1,
    /// HTTP/2.
    Http2,
}

/// Plain TCP: HTTP/1.1 on the stream as accepted. No h2c.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl<S> Prepare<S> for Plain
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = S;

    async fn prepare(&self, stream: S) -> io::Result<Prepared<S>> {
        Ok(Prepared::http1(stream))
    }
}
