//! What `serve` accepts from: a bound TCP or Unix listener.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A bound listener that hands out connections.
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Stream: Send + 'static;
    /// The other end, for logs.
    type Addr: fmt::Debug + Send + 'static;

    /// Waits for the next connection. Errors are the listener's (e.g.
    /// `EMFILE`) or concern that one connection only (see
    /// [`is_connection_error`]).
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        // Answers are small: send them now rather than wait for an ACK.
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&self) -> io::Result<(UnixStream, Self::Addr)> {
        UnixListener::accept(self).await
    }
}

/// Errors that concern one incoming connection only, not the listener.
pub(super) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
