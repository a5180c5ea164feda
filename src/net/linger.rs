//! Lingering close: how a connection ends so that its client still reads
//! the answer it was sent.
//!
//! A server that closes a connection while bytes of the client sit unread
//! in its receive queue makes the kernel reset it (TCP sends RST; a Unix
//! socket hands the client ECONNRESET), and a client still writing its
//! request to a closed socket gets EPIPE; either way the client may never
//! read the answer that was already on its way. That happens whenever an
//! answer comes before the request was read to its end: a 429 or a 403
//! given on the headers alone, a 413, a connection refused over a bound.
//! So a connection is not just dropped: its write side is shut (the client
//! reads the answer, then EOF), and what the client still sends is read and
//! thrown away until it closes its end, for [`LINGER`] and [`LINGER_BYTES`]
//! at most (what nginx calls `lingering_close`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::oneshot;

/// Longest a closing connection is drained. A client that has its answer
/// closes at once; this bounds one that does not.
pub const LINGER: Duration = Duration::from_secs(2);

/// Most bytes drained from a closing connection (a request body is at most
/// 16 KiB on the socket; this leaves room for larger refused ones).
pub const LINGER_BYTES: u64 = 1024 * 1024;

/// Shuts the write side of `io` and reads (and drops) what the client still
/// sends, until it closes its end, `within` passes or [`LINGER_BYTES`] are
/// read; then `io` is dropped, which closes it.
pub async fn close<I>(mut io: I, within: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let drain = async {
        // Errors here only mean the client is gone already.
        let _ = io.shutdown().await;
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut (&mut io).take(LINGER_BYTES), &mut sink).await;
    };
    let _ = tokio::time::timeout(within, drain).await;
}

/// The stream HTTP is spoken on, handed back (through [`Returned::wait`])
/// when HTTP is done with it, so that the accept loop can [`close`] it.
pub struct Returned<I> {
    io: Option<I>,
    back: Option<oneshot::Sender<I>>,
}

/// Where a [`Returned`] stream comes back.
pub struct Return<I>(oneshot::Receiver<I>);

impl<I> Returned<I> {
    /// Wraps `io`; the stream comes back on the [`Return`] when the wrapper
    /// is dropped.
    pub fn new(io: I) -> (Returned<I>, Return<I>) {
        let (tx, rx) = oneshot::channel();
        (
            Returned {
                io: Some(io),
                back: Some(tx),
            },
            Return(rx),
        )
    }

    fn io(&mut self) -> &mut I {
        // Taken only in `drop`.
        self.io.as_mut().expect("stream used after it was returned")
    }
}

impl<I> Return<I> {
    /// The stream, once its wrapper was dropped.
    pub async fn wait(self) -> Option<I> {
        self.0.await.ok()
    }
}

impl<I> Drop for Returned<I> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // Nobody waiting (the task was aborted): the stream just closes.
            let _ = back.send(io);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Returned<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.io()).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Returned<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(I::is_write_vectored)
    }
}
