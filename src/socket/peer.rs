//! Who is asking: the caller's kernel credentials (SO_PEERCRED, taken at
//! connect time, never from the request) and the `[[callers]]` entries of
//! the policies that name it.

use std::sync::Arc;

use crate::audit::chain::AuditEntry;
use crate::config::policy::{CallerMatch, CallerPolicy, Policies, Policy};

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
