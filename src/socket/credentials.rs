//! The socket's step before HTTP (the seam of `net::serve`): the caller's
//! kernel credentials, read once per connection and attached to each of its
//! requests as axum's `ConnectInfo<Peer>`, and the bound on the connections
//! one peer uid may hold open (`server.max_connections_per_uid`). The
//! accept loop, its global bound and the shutdown are `net`'s.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::Notify;

use super::peer::Peer;
use crate::net::linger;
use crate::net::prepare::{Prepare, Prepared};

/// How long a connection over its uid's bound waits for one of that uid's
/// connections to close (a client that opens a connection per request
/// reconnects before the daemon has seen its last one close), and then may
/// take to send its request before it is answered 503 anyway.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Reads the peer credentials (`Peer::of`) of each connection, holds it to
/// its uid's bound, and serves HTTP/1.1 on it.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    per_uid: usize,
    open: Arc<Open>,
}

/// The open connections of every uid that has any.
#[derive(Debug, Default)]
struct Open {
    by_uid: Mutex<HashMap<u32, usize>>,
    /// Woken whenever a connection closes.
    closed: Notify,
}

impl PeerCredentials {
    /// At most `per_uid` open connections for each peer uid.
    pub fn new(per_uid: usize) -> Self {
        PeerCredentials {
            per_uid,
            open: Arc::default(),
        }
    }

    /// One of `uid`'s connections, if it has one left.
    fn take(&self, uid: u32) -> Option<UidSlot> {
        let mut open = self.open.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(uid).or_insert(0);
        if *n >= self.per_uid {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            uid,
            open: self.open.clone(),
        })
    }

    /// One of `uid`'s connections as soon as one closes, for
    /// [`REFUSAL_WAIT`] at most.
    async fn wait_for(&self, uid: u32) -> Option<UidSlot> {
        let deadline = tokio::time::Instant::now() + REFUSAL_WAIT;
        loop {
            let closed = self.open.closed.notified();
            tokio::pin!(closed);
            // Registered before looking, so no close is missed between.
            closed.as_mut().enable();
            if let Some(slot) = self.take(uid) {
                return Some(slot);
            }
            tokio::time::timeout_at(deadline, closed).await.ok()?;
        }
    }
}

/// One open connection of a uid, given back when the connection closes.
#[derive(Debug)]
struct UidSlot {
    uid: u32,
    open: Arc<Open>,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut by_uid = self.open.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
        drop(by_uid);
        self.open.closed.notify_waiters();
    }
}

/// A socket connection, holding its uid's slot until it is closed (after
/// its lingering close, so that lingering counts against the uid too).
#[derive(Debug)]
pub struct PeerStream {
    stream: UnixStream,
    _slot: UidSlot,
}

impl Prepare<UnixStream> for PeerCredentials {
    type Io = PeerStream;

    async fn prepare(&self, stream: UnixStream) -> io::Result<Prepared<PeerStream>> {
        let peer = Peer::of(&stream);
        let slot = match self.take(peer.uid) {
            Some(slot) => Some(slot),
            None => self.wait_for(peer.uid).await,
        };
        let Some(slot) = slot else {
            refuse_over_bound(stream, peer.uid, self.per_uid).await;
            return Err(io::Error::other(format!(
                "uid {} is at server.max_connections_per_uid ({}); answered 503",
                peer.uid, self.per_uid
            )));
        };
        let stream = PeerStream {
            stream,
            _slot: slot,
        };
        let mut prepared = Prepared::http1(stream);
        prepared.extensions.insert(ConnectInfo(peer));
        Ok(prepared)
    }
}

/// Answers a connection still over its uid's bound with a 503 in the API's
/// error shape, without serving it: it is never read beyond its request,
/// holds no slot, and is closed by lingering (its client reads the answer
/// rather than a reset). Its request is given a moment to arrive first, so
/// the answer follows it as HTTP expects.
async fn refuse_over_bound(mut stream: UnixStream, uid: u32, per_uid: usize) {
    let _ = tokio::time::timeout(REFUSAL_WAIT, stream.readable()).await;
    let body = serde_json::json!({
        "error": "unavailable",
        "message": format!(
            "caller uid {uid} already has {per_uid} connections open (server.max_connections_per_uid)"
        ),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if tokio::time::timeout(REFUSAL_WAIT, stream.write_all(answer.as_bytes()))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        linger::close(stream, linger::LINGER).await;
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::routing::get;
    use http_body_util::{BodyExt as _, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::net::Limits;

    #[tokio::test]
    async fn every_request_carries_the_callers_kernel_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let router = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<Peer>| async move {
                format!("{} {} {:?}", peer.uid, peer.gid, peer.pid)
            }),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(crate::net::serve(
            "socket",
            listener,
            PeerCredentials::new(16),
            router,
            Limits::default(),
            shutdown.clone(),
        ));

        let stream = UnixStream::connect(&path).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let expected = format!(
            "{} {} {:?}",
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            Some(std::process::id() as i32)
        );
        // Twice on one keep-alive connection: each request gets them.
        for _ in 0..2 {
            sender.ready().await.unwrap();
            let req = hyper::Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let body = sender.send_request(req).await.unwrap().into_body();
            assert_eq!(body.collect().await.unwrap().to_bytes(), expected);
        }

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
