//! The deadline of every socket request (`server.request_timeout`), from
//! the end of its headers to its answer. A caller that stops sending its
//! body (or a request stuck behind anything else) holds its connection and
//! its caller's slot this long at most. The headers have their own bound
//! (`server.header_timeout`, in `net`).
//!
//! When the deadline passes, the request's work is dropped and the answer
//! is 408 `request_timeout` if its body had not all arrived, else 503;
//! either is audited as a refusal, like any other.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as _, Bytes, Frame, SizeHint};

use super::audited::audited;
use super::error::ApiError;
use super::peer::Peer;
use super::state::SocketState;

/// Runs the request under `state.request_timeout`.
pub(super) async fn deadline(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let action = action(request.uri().path());
    let received = Arc::new(AtomicBool::new(request.body().is_end_stream()));
    let request = request.map(|inner| {
        Body::new(Watched {
            inner,
            received: received.clone(),
        })
    });
    let limit = state.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let error = if received.load(Ordering::Acquire) {
                ApiError::unavailable(format!(
                    "request not answered within server.request_timeout ({}s)",
                    limit.as_secs()
                ))
            } else {
                ApiError::request_timeout(format!(
                    "request body not received within server.request_timeout ({}s)",
                    limit.as_secs()
                ))
            };
            let entry = peer.audit(state.clock.now().timestamp(), action);
            match audited(&state, entry, Err::<(), _>(error)).await {
                Err(e) => e.into_response(),
                Ok(()) => unreachable!("audited returns the refusal it was given"),
            }
        }
    }
}

/// The audit action of a request to `path` (the one its handler records).
fn action(path: &str) -> &'static str {
    match path {
        "/v1/assertions" => "sign",
        "/v1/tokens" => "token",
        "/v1/keys" => "keys",
        "/v1/admin/rotate" => "rotate",
        "/v1/admin/revoke" => "revoke",
        _ => "audit",
    }
}

/// A request body that says when it has all been read.
struct Watched {
    inner: Body,
    received: Arc<AtomicBool>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
