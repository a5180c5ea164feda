//! The socket's step before HTTP (the seam of `net::serve`): the caller's
//! kernel credentials, read once per connection and attached to each of its
//! requests as axum's `ConnectInfo<Peer>`. The accept loop, its bounds and
//! the shutdown are `net`'s.

use std::io;

use axum::extract::ConnectInfo;
use tokio::net::UnixStream;

use super::peer::Peer;
use crate::net::prepare::{Prepare, Prepared};

/// Reads the peer credentials (`Peer::of`) of each connection and serves
/// HTTP/1.1 on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerCredentials;

impl Prepare<UnixStream> for PeerCredentials {
    type Io = UnixStream;

    async fn prepare(&self, stream: UnixStream) -> io::Result<Prepared<UnixStream>> {
        let peer = Peer::of(&stream);
        let mut prepared = Prepared::http1(stream);
        prepared.extensions.insert(ConnectInfo(peer));
        Ok(prepared)
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
            PeerCredentials,
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
