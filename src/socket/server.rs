//! The socket's accept loop: a bounded number of connections, a deadline
//! for request headers (slowloris), the caller's kernel credentials attached
//! to every request, and a graceful stop that lets in-flight requests end.
//!
//! Written with hyper-util rather than `axum::serve` because the latter
//! offers neither a connection bound nor a header timeout.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::peer::Peer;

/// Bounds of the socket server.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// Open connections at most; further clients wait in the kernel's
    /// backlog until one closes. Default 1024 (`server.max_connections`).
    pub max_connections: usize,
    /// Time a client has to send a request's headers, also between
    /// keep-alive requests. Default 30 s.
    pub header_timeout: Duration,
    /// How long shutdown waits for open connections. Default 10 s.
    pub grace: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    router: axum::Router,
    limits: SocketLimits,
    shutdown: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "socket accept failed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let peer = Peer::of(&stream);
        let service = TowerToHyperService::new(router.clone().layer(Extension(ConnectInfo(peer))));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(conn);
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "socket connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("socket connections still open after the shutdown grace; closing them");
    }
    conns.shutdown().await;
}
