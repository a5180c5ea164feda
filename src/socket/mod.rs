//! The Unix socket API (HTTP/1.1 + JSON). Who is asking comes from the
//! kernel (SO_PEERCRED), never from the request; what they may do comes from
//! the policies' `[[callers]]`. One file per request kind.

mod admin;
mod assertions;
mod credentials;
mod error;
mod keys;
mod limits;
mod listener;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::audit::AuditEntry;
use crate::config::policy::{CallerMatch, CallerPolicy, Policies, Policy};
use crate::state::Shared;

pub use credentials::PeerCredentials;
pub use error::ApiError;
pub use keys::{KeyView, key_view};
pub use limits::CallerLimits;
pub use listener::{SocketError, bind};

/// Most a request body may hold (DESIGN §3: 413 above).
pub const MAX_BODY: usize = 16 * 1024;

/// The caller as the kernel reports it at connect time.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// `/proc/<pid>/exe`, where readable.
    pub exe: Option<String>,
}

impl Peer {
    /// What the kernel says about the other end of `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => {
                let pid = cred.pid();
                let exe = pid.and_then(|p| {
                    std::fs::read_link(format!("/proc/{p}/exe"))
                        .ok()
                        .map(|p| p.display().to_string())
                });
                Peer {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid,
                    exe,
                }
            }
            // Without credentials nobody matches any [[callers]] entry:
            // u32::MAX is never a real uid/gid (it is (uid_t)-1).
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
                exe: None,
            },
        }
    }
}

impl Peer {
    /// An audit entry stamped with this caller.
    pub fn audit(&self, at: i64, action: &str) -> AuditEntry {
        AuditEntry {
            at,
            action: action.to_owned(),
            outcome: "ok".to_owned(),
            uid: Some(self.uid),
            gid: Some(self.gid),
            pid: self.pid,
            exe: self.exe.clone(),
            ..AuditEntry::default()
        }
    }

    fn matches(&self, caller: &CallerPolicy) -> bool {
        match caller.matcher {
            CallerMatch::Uid(uid) => self.uid == uid,
            CallerMatch::Gid(gid) => self.gid == gid,
        }
    }

    /// Every `[[callers]]` entry, across all policies, that names this peer.
    pub fn grants<'a>(&self, policies: &'a Policies) -> Vec<Grant<'a>> {
        policies
            .iter()
            .flat_map(|p| p.callers.iter().map(move |c| (p, c)))
            .filter(|(_, c)| self.matches(c))
            .collect()
    }

    /// Whether this peer is an admin of `set`'s policy.
    pub fn is_admin_of(&self, policy: &Policy) -> bool {
        policy.callers.iter().any(|c| c.admin && self.matches(c))
    }
}

/// One `[[callers]]` entry that names a peer, with its policy.
pub type Grant<'a> = (&'a Arc<Policy>, &'a CallerPolicy);

/// The socket router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/assertions", post(assertions::create))
        .route("/v1/keys", get(keys::list))
        .route("/v1/admin/rotate", post(admin::rotate))
        .route("/v1/admin/revoke", post(admin::revoke))
        .route("/v1/audit", get(admin::audit_tail))
        .route("/v1/audit/verify", get(admin::audit_verify))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        // A known path with another method is no endpoint either: answered
        // in the one error shape (axum's default is a bare 405).
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::not_found(format!("no such endpoint for method {method}"))
        })
        .with_state(shared)
}
