//! The accept loop and the graceful stop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Extensions, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::limits::Limits;
use super::listener::Listener;
use super::listener::is_connection_error;
use super::prepare::{Prepare, Protocol};

/// How long accept pauses after a listener error such as `EMFILE`, instead
/// of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` is cancelled; `name`
/// (e.g. `"public"`) labels the logs.
///
/// Each accepted connection takes one of `limits.max_connections` permits
/// (further clients wait in the kernel's backlog), runs `prepare`, then
/// speaks the protocol it chose, HTTP/1.1 with `limits.header_timeout`. On
/// cancel: stops accepting and closes the listener, drops connections still
/// being prepared, asks open ones to finish (HTTP/1.1 closes idle
/// keep-alive connections at once and others after the response in flight,
/// HTTP/2 sends GOAWAY), waits up to `limits.grace`, then closes the rest
/// with a warning.
pub async fn serve<L, P>(
    name: &'static str,
    listener: L,
    prepare: P,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) where
    L: Listener,
    P: Prepare<L::Stream>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let prepare = Arc::new(prepare);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();

    loop {
        // Finished connections leave their (unit) results behind.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(listener = name, error = %e, "accept failed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Taken before `prepare`, so that shutdown also waits for (and
        // then closes) connections that are still being prepared.
        let watcher = graceful.watcher();
        let prepare = prepare.clone();
        let builder = builder.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let prepared = tokio::select! {
                r = prepare.prepare(stream) => match r {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(listener = name, ?peer, error = %e, "connection dropped before HTTP");
                        return;
                    }
                },
                // No request in flight yet: nothing to wait for.
                _ = shutdown.cancelled() => return,
            };
            let builder = match prepared.protocol {
                Protocol::Http1 => builder.http1_only(),
                Protocol::Http2 => builder.http2_only(),
            };
            let service = Routed {
                router: TowerToHyperService::new(router),
                extensions: prepared.extensions,
            };
            let conn = builder.serve_connection(TokioIo::new(prepared.io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = name, ?peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::debug!(
        listener = name,
        connections = graceful.count(),
        "listener closed; waiting for open connections"
    );
    if tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            grace = ?limits.grace,
            "connections still open after the shutdown grace; closing them"
        );
    }
    conns.shutdown().await;
}

/// The router, with the connection's extensions added to every request.
#[derive(Clone)]
struct Routed {
    router: TowerToHyperService<Router>,
    extensions: Extensions,
}

impl hyper::service::Service<Request<Incoming>> for Routed {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = TowerToHyperServiceFuture<Router, Request<Incoming>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().extend(self.extensions.clone());
        self.router.call(req)
    }
}
