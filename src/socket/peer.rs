//! Who is asking: the caller's kernel credentials (SO_PEERCRED and
//! SO_PEERGROUPS, taken at connect time, never from the request) and the
//! `[[callers]]` entries of the policies that name it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use crate::audit::chain::AuditEntry;
use crate::config::policy::{CallerMatch, CallerPolicy, Policies, Policy};

/// Most supplementary groups written into one audit record: a process may
/// have up to 65536, and a record must stay small (the rest is counted).
const GROUPS_IN_RECORD: usize = 32;

/// The caller as the kernel reports it at connect time.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// The supplementary groups, sorted; empty when the kernel does not
    /// tell (then only `gid` can match a group grant).
    pub groups: Arc<[u32]>,
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
                let groups = match peer_groups(stream.as_fd()) {
                    Ok(mut groups) => {
                        groups.sort_unstable();
                        groups.dedup();
                        groups.into()
                    }
                    Err(e) => {
                        // Kernels before 4.13 have no SO_PEERGROUPS: group
                        // grants then match the primary gid only.
                        tracing::debug!(error = %e, "no supplementary groups of the socket peer");
                        Arc::from([])
                    }
                };
                Peer {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    groups,
                    pid,
                    exe,
                }
            }
            // Without credentials nobody matches any [[callers]] entry:
            // u32::MAX is never a real uid/gid (it is (uid_t)-1).
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                groups: Arc::from([]),
                pid: None,
                exe: None,
            },
        }
    }
}

/// The peer's supplementary groups as the kernel recorded them when it
/// connected (the same instant as SO_PEERCRED). Neither nix nor rustix
/// offers SO_PEERGROUPS, so this is libc's getsockopt: the kernel answers
/// ERANGE with the size it needs when the buffer is too small.
fn peer_groups(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    // Twice at most: the groups of a connected peer do not change.
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * GID)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ERANGE))?;
        // SAFETY: `groups` has room for `len` bytes, and the kernel writes
        // at most `len` bytes and sets `len` to what it wrote (or needs).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / GID);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || len as usize <= groups.len() * GID {
            return Err(err);
        }
        groups.resize(len as usize / GID, 0);
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

impl Peer {
    /// An audit entry stamped with this caller; its supplementary groups
    /// go in the detail (the trail has no column for them).
    pub fn audit(&self, at: i64, action: &str) -> AuditEntry {
        AuditEntry {
            at,
            action: action.to_owned(),
            outcome: "ok".to_owned(),
            uid: Some(self.uid),
            gid: Some(self.gid),
            pid: self.pid,
            exe: self.exe.clone(),
            detail: self.groups_note(),
            ..AuditEntry::default()
        }
    }

    /// `groups 10,27,1001` (the first `GROUPS_IN_RECORD`, then how many
    /// in all), or nothing when the peer has none.
    fn groups_note(&self) -> Option<String> {
        if self.groups.is_empty() {
            return None;
        }
        let shown: Vec<String> = self
            .groups
            .iter()
            .take(GROUPS_IN_RECORD)
            .map(u32::to_string)
            .collect();
        let mut note = format!("groups {}", shown.join(","));
        if self.groups.len() > GROUPS_IN_RECORD {
            note.push_str(&format!(",... ({} in all)", self.groups.len()));
        }
        Some(note)
    }

    fn matches(&self, caller: &CallerPolicy) -> bool {
        match caller.matcher {
            CallerMatch::Uid(uid) => self.uid == uid,
            // The socket file's mode lets supplementary groups in (the
            // usual `usermod -aG`), so a group grant honours them too.
            CallerMatch::Gid(gid) => self.gid == gid || self.groups.binary_search(&gid).is_ok(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid: 4242,
            gid,
            groups: groups.into(),
            pid: None,
            exe: None,
        }
    }

    #[test]
    fn the_groups_a_record_shows_are_bounded() {
        assert_eq!(peer(1, &[]).audit(0, "sign").detail, None);
        assert_eq!(
            peer(1, &[10, 27]).audit(0, "sign").detail.as_deref(),
            Some("groups 10,27")
        );
        let many: Vec<u32> = (0..65536).collect();
        let note = peer(1, &many).audit(0, "sign").detail.unwrap();
        assert!(note.len() < 300, "{note}");
        assert!(note.ends_with(",... (65536 in all)"), "{note}");
    }

    #[test]
    fn a_connected_peer_has_this_process_s_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut got = peer_groups(a.as_fd()).unwrap();
        got.sort_unstable();
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        mine.sort_unstable();
        mine.dedup();
        got.dedup();
        assert_eq!(got, mine);
    }
}
