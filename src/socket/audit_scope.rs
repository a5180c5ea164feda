//! Which audit records an admin may read: those of the sets it is an
//! admin of. A record belongs to a set by what the daemon wrote into it,
//! never by what a caller asked for: its kid (the set is the kid's first
//! part, and only kids of existing keys are recorded), or else its client_id
//! when that names a client of a policy in force. A record of no set
//! (policy reloads, pruning, summaries of suppressed refusals, refusals of
//! clients no policy has, audit reads) is shown only to an admin of every
//! set, who sees everything.

use crate::audit::chain::AuditEntry;
use crate::config::policy::Policies;
use crate::types::SetName;

use super::peer::Peer;

/// What one admin may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    /// An admin of every set in force: every record.
    Every,
    /// The records of these sets only.
    Sets(Vec<SetName>),
}

impl AuditScope {
    /// The scope of `peer` under `policies`; `None` when it is an admin of
    /// no set.
    pub fn of(peer: &Peer, policies: &Policies) -> Option<AuditScope> {
        let sets: Vec<SetName> = policies
            .iter()
            .filter(|p| peer.is_admin_of(p))
            .map(|p| p.name.clone())
            .collect();
        if sets.is_empty() {
            None
        } else if sets.len() == policies.len() {
            Some(AuditScope::Every)
        } else {
            Some(AuditScope::Sets(sets))
        }
    }

    /// Whether this scope shows `entry`.
    pub fn sees(&self, entry: &AuditEntry, policies: &Policies) -> bool {
        match self {
            AuditScope::Every => true,
            AuditScope::Sets(sets) => record_set(entry, policies)
                .is_some_and(|set| sets.iter().any(|s| s.as_str() == set)),
        }
    }
}

/// The set a record belongs to, if any (see the module's comment).
pub fn record_set<'a>(entry: &'a AuditEntry, policies: &'a Policies) -> Option<&'a str> {
    if let Some(kid) = entry.kid.as_deref() {
        // Set names hold no `-`: the kid's first part is its set.
        return kid.split('-').next();
    }
    let client = entry.client_id.as_deref()?;
    policies
        .find_client(client)
        .map(|(policy, _)| policy.name.as_str())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::policy::Policy;

    fn policies() -> Policies {
        let set = |name: &str, client: &str, admin_uid: u32| {
            Policy::from_toml(
                Path::new("p.toml"),
                &format!(
                    "name = \"{name}\"\nrotate_every = \"30d\"\n\
                     [[clients]]\nclient_id = \"{client}\"\naudiences = [\"https://ehr.example.com/token\"]\n\
                     [[callers]]\nuid = {admin_uid}\nclients = []\nadmin = true\n\
                     [[callers]]\nuid = 7\nclients = [\"{client}\"]\nadmin = true\n"
                ),
            )
            .unwrap()
        };
        Policies::from_policies(vec![set("one", "app1", 1), set("two", "app2", 2)]).unwrap()
    }

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            groups: std::sync::Arc::from([]),
            pid: None,
            exe: None,
        }
    }

    fn record(kid: Option<&str>, client_id: Option<&str>) -> AuditEntry {
        AuditEntry {
            kid: kid.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
            ..AuditEntry::default()
        }
    }

    #[test]
    fn an_admin_of_one_set_sees_that_set_s_records_only() {
        let policies = policies();
        let one = AuditScope::of(&peer(1), &policies).unwrap();
        assert_eq!(one, AuditScope::Sets(vec![SetName::new("one").unwrap()]));
        let table = [
            (record(Some("one-es384-v1-abcdefgh"), Some("app1")), true),
            (record(Some("one-rs384-v2-a-b_c-de"), None), true),
            (record(Some("two-es384-v1-abcdefgh"), Some("app2")), false),
            // The kid decides over the client_id a caller named.
            (record(Some("two-es384-v1-abcdefgh"), Some("app1")), false),
            (record(None, Some("app1")), true),
            (record(None, Some("app2")), false),
            // No set: a client no policy has, or no client at all.
            (record(None, Some("nobody")), false),
            (record(None, None), false),
        ];
        for (entry, shown) in table {
            assert_eq!(one.sees(&entry, &policies), shown, "{entry:?}");
        }
    }

    #[test]
    fn an_admin_of_every_set_sees_every_record_and_a_non_admin_has_no_scope() {
        let policies = policies();
        let every = AuditScope::of(&peer(7), &policies).unwrap();
        assert_eq!(every, AuditScope::Every);
        for entry in [
            record(None, None),
            record(None, Some("nobody")),
            record(Some("gone-es384-v1-abcdefgh"), None),
        ] {
            assert!(every.sees(&entry, &policies));
        }
        assert_eq!(AuditScope::of(&peer(3), &policies), None);
    }
}
