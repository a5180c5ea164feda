//! [`Limits`]: the bounds of one listener.

use std::time::Duration;

/// Bounds of one listener; every listener gets its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most (handshaking ones included); further
    /// clients wait in the kernel's backlog until one closes. Default 1024
    /// (`server.max_connections`).
    pub max_connections: usize,
    /// Time an HTTP/1.1 client has to send a request's headers, from the
    /// moment the connection is ready for HTTP and again between keep-alive
    /// requests; a slower one is disconnected. Default 30 s
    /// (`server.header_timeout`).
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight before closing the
    /// connections still open. Default 10 s.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }
}
