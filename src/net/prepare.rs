//! The seam between the accept loop and a listener's own step: what happens
//! to a connection between accept and HTTP.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::http::Extensions;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

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

/// The HTTP version spoken on a connection: over TLS as ALPN negotiated it;
/// over plain TCP from the client's first bytes, looked at within the
/// header timeout ([`Plain`]), so no connection waits for a preface
/// without a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0), with the header timeout.
    Http1,
    /// HTTP/2.
    Http2,
}

/// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c) when the
/// client opens with the HTTP/2 preface, as a reverse proxy speaking h2c
/// upstream does (`axum::serve`, which these listeners ran before, answered
/// both). The first bytes must arrive within `first_bytes`, the header
/// timeout, like any request's headers.
#[derive(Debug, Clone, Copy)]
pub struct Plain {
    first_bytes: Duration,
}

impl Plain {
    /// Plain TCP whose clients have `header_timeout` to send their first
    /// bytes.
    pub fn new(header_timeout: Duration) -> Self {
        Plain {
            first_bytes: header_timeout,
        }
    }
}

impl Prepare<TcpStream> for Plain {
    type Io = TcpStream;

    async fn prepare(&self, stream: TcpStream) -> io::Result<Prepared<TcpStream>> {
        let protocol = tokio::time::timeout(self.first_bytes, sniff(&stream))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing sent within the header timeout",
                )
            })??;
        Ok(Prepared {
            io: stream,
            protocol,
            extensions: Extensions::new(),
        })
    }
}

/// Which protocol the client speaks, from its first bytes, without taking
/// them off the stream (`peek`): HTTP/2 with prior knowledge opens with the
/// preface `PRI * HTTP/2.0`, and no HTTP/1 request starts with `PRI`.
async fn sniff(stream: &TcpStream) -> io::Result<Protocol> {
    const PREFACE: &[u8] = b"PRI";
    let mut buf = [0u8; 3];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != PREFACE[..n] {
            // EOF or anything else: HTTP/1 answers (or closes) it.
            return Ok(Protocol::Http1);
        }
        if n == PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // A prefix of the preface and nothing more yet: `peek` returns at
        // once while bytes wait unread, so look again a moment later.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
