//! The accept loop, the idle bound of HTTP/2 connections, and the graceful
//! stop.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{Extensions, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::limits::Limits;
use super::linger::{self, Returned};
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
/// speaks the protocol it chose, HTTP/1.1 with `limits.header_timeout`, or
/// HTTP/2, which is asked to finish (GOAWAY) once it has had no request in
/// flight for `limits.header_timeout`, the time an HTTP/1.1 connection may
/// idle between requests. A connection HTTP is done with is closed by
/// lingering (`linger`), so its client reads what it was answered. On
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
            let (builder, idle) = match prepared.protocol {
                Protocol::Http1 => (builder.http1_only(), None),
                Protocol::Http2 => (builder.http2_only(), Some(limits.header_timeout)),
            };
            let activity = Arc::new(Activity::new());
            let service = Routed {
                router: TowerToHyperService::new(router),
                extensions: prepared.extensions,
                activity: activity.clone(),
            };
            let (io, back) = Returned::new(prepared.io);
            // Boxed rather than pinned on the stack: it must be dropped
            // (giving the stream back) before the lingering close.
            let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), service));
            let mut finishing = false;
            let ended = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = shutdown.cancelled(), if !finishing => {
                        conn.as_mut().graceful_shutdown();
                        finishing = true;
                    }
                    _ = activity.idle_for(idle), if !finishing => {
                        tracing::debug!(listener = name, ?peer, "idle HTTP/2 connection asked to finish");
                        conn.as_mut().graceful_shutdown();
                        finishing = true;
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(listener = name, ?peer, error = %e, "connection ended with an error");
            }
            drop(conn);
            if let Some(io) = back.wait().await {
                tokio::select! {
                    () = linger::close(io, linger::LINGER) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        });
    }

    drop(listener);
    tracing::debug!(
        listener = name,
        connections = conns.len(),
        "listener closed; waiting for open connections"
    );
    let finished = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.grace, finished).await.is_err() {
        tracing::warn!(
            listener = name,
            grace = ?limits.grace,
            "connections still open after the shutdown grace; closing them"
        );
    }
    conns.shutdown().await;
}

/// Whether a connection has requests in flight, and since when it has had
/// none.
struct Activity {
    /// Requests in flight, and when the last one started or ended.
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new((0, Instant::now())),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = (s.0 + 1, Instant::now());
        InFlight(self.clone())
    }

    /// Returns once no request has been in flight for `idle`; never when
    /// `idle` is `None`.
    async fn idle_for(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let (inflight, since) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
            let wake = if inflight == 0 {
                let at = since + idle;
                if at <= Instant::now() {
                    return;
                }
                at
            } else {
                // A request in flight: look again after another `idle`.
                Instant::now() + idle
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

/// One request in flight; ends when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = (s.0.saturating_sub(1), Instant::now());
    }
}

/// The router, with the connection's extensions added to every request,
/// and each request counted in flight until it is answered.
#[derive(Clone)]
struct Routed {
    router: TowerToHyperService<Router>,
    extensions: Extensions,
    activity: Arc<Activity>,
}

type Answer = Pin<Box<dyn Future<Output = Result<axum::response::Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Routed {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().extend(self.extensions.clone());
        let in_flight = self.activity.begin();
        let answer = self.router.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        })
    }
}
