//! Who may have what signed: the authorization of a signature request as a
//! pure function of the policies in force, the caller's grants and the
//! request. No I/O and no clock; the handler (`assertions`) wires it to the
//! body, the signers and the audit trail.
//!
//! The order of the checks is part of the contract: a caller that no policy
//! lists learns nothing; a client this caller may not use gets one 403,
//! the same whether the client exists or not and before anything else of
//! the request (its set) is looked at; a set other than the client's gets
//! one 403 whether that set exists or not; and no answer names a file. So
//! the socket never tells a caller who else is configured.

use std::sync::Arc;

use serde::Deserialize;

use super::error::ApiError;
use super::peer::{Grant, Peer};
use crate::config::policy::{ClientPolicy, Policies, Policy};
use crate::types::{Alg, SetName};

/// The body of `POST /v1/assertions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub client_id: String,
    pub audience: String,
    pub alg: Option<String>,
    pub set: Option<String>,
    pub lifetime_s: Option<u64>,
}

/// A signature the caller may have: the client's policy and entry, the
/// algorithm and the assertion lifetime in seconds.
#[derive(Debug)]
pub struct SignGrant<'p> {
    pub policy: &'p Arc<Policy>,
    pub client: &'p ClientPolicy,
    pub alg: Alg,
    pub lifetime_s: u64,
}

/// A refused signature: the answer, and the set of the client once the
/// refusal comes after the caller was found allowed for that client
/// (metrics label refusals with it; a name taken from the request would let
/// callers mint label values, and a refusal of a client the caller may not
/// use is counted as `unknown`, not under that client).
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    pub set: Option<SetName>,
}

/// Decides whether `peer`, whose `[[callers]]` entries are `grants`, may
/// have `req` signed under `policies`.
pub fn authorize_signature<'p>(
    policies: &'p Policies,
    grants: &[Grant<'p>],
    peer: &Peer,
    req: &SignRequest,
) -> Result<SignGrant<'p>, Refusal> {
    let refuse = |error: ApiError| Refusal { error, set: None };
    let not_allowed = || {
        ApiError::forbidden(format!(
            "client_id {:?} is not allowed for this caller (uid {}, gid {})",
            req.client_id, peer.uid, peer.gid
        ))
    };
    if grants.is_empty() {
        return Err(refuse(ApiError::forbidden(format!(
            "caller uid {} gid {} is not listed in any policy's [[callers]]",
            peer.uid, peer.gid
        ))));
    }
    let allowed = |policy: &Policy| {
        grants
            .iter()
            .any(|(p, c)| p.name == policy.name && c.clients.contains(&req.client_id))
    };
    let (policy, client) = policies
        .find_client(&req.client_id)
        .filter(|(policy, _)| allowed(policy))
        .ok_or_else(|| refuse(not_allowed()))?;
    let refuse = |error: ApiError| Refusal {
        error,
        set: Some(policy.name.clone()),
    };
    if let Some(set) = &req.set {
        let name =
            SetName::new(set).map_err(|e| refuse(ApiError::bad_request(format!("set: {e}"))))?;
        if name != policy.name {
            return Err(refuse(ApiError::forbidden(format!(
                "client_id {:?} does not belong to set {set:?}",
                req.client_id
            ))));
        }
    }
    if !client.audiences.iter().any(|a| a == &req.audience) {
        return Err(refuse(ApiError::forbidden(format!(
            "audience {:?} is not allowed for client_id {:?} (clients.audiences of set {})",
            req.audience, req.client_id, policy.name
        ))));
    }
    let alg = match &req.alg {
        None => policy.algorithms[0],
        Some(a) => a
            .parse::<Alg>()
            .map_err(|e| refuse(ApiError::bad_request(format!("alg: {e}"))))?,
    };
    if !policy.algorithms.contains(&alg) {
        return Err(refuse(ApiError::bad_request(format!(
            "alg: set {} does not use {alg} (algorithms = {:?})",
            policy.name,
            policy
                .algorithms
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
        ))));
    }
    let max = policy.assertion_lifetime.as_secs();
    let lifetime_s = req.lifetime_s.unwrap_or(max);
    if lifetime_s == 0 || lifetime_s > max {
        return Err(refuse(ApiError::bad_request(format!(
            "lifetime_s = {lifetime_s}: must be between 1 and the policy's assertion_lifetime ({max})"
        ))));
    }
    Ok(SignGrant {
        policy,
        client,
        alg,
        lifetime_s,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::http::StatusCode;

    use super::*;
    use crate::config::policy::Policy;

    const UID: u32 = 4100;
    const ADMIN_UID: u32 = 4200;

    /// Two sets: `default` (RS384, ES384; client `app`, callable by UID) and
    /// `partner` (ES384 only, lifetime 2m; client `partner-app`, callable by
    /// no one but ADMIN_UID).
    fn policies() -> Policies {
        let default = Policy::from_toml(
            Path::new("policies/default.toml"),
            &format!(
                "name = \"default\"\nrotate_every = \"30d\"\nassertion_lifetime = \"5m\"\n\
                 [[clients]]\nclient_id = \"app\"\naudiences = [\"https://ehr.example.com/token\"]\n\
                 [[callers]]\nuid = {UID}\nclients = [\"app\"]\n"
            ),
        )
        .unwrap();
        let partner = Policy::from_toml(
            Path::new("policies/partner.toml"),
            &format!(
                "name = \"partner\"\nalgorithms = [\"ES384\"]\nrotate_every = \"30d\"\n\
                 assertion_lifetime = \"2m\"\n\
                 [[clients]]\nclient_id = \"partner-app\"\naudiences = [\"https://partner.example.com/token\"]\n\
                 [[callers]]\nuid = {ADMIN_UID}\nclients = [\"partner-app\"]\nadmin = true\n"
            ),
        )
        .unwrap();
        Policies::from_policies(vec![default, partner]).unwrap()
    }

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: 100,
            groups: std::sync::Arc::from([]),
            pid: Some(1),
            exe: None,
        }
    }

    fn request(client_id: &str, audience: &str) -> SignRequest {
        SignRequest {
            client_id: client_id.to_owned(),
            audience: audience.to_owned(),
            alg: None,
            set: None,
            lifetime_s: None,
        }
    }

    const AUD: &str = "https://ehr.example.com/token";

    /// What a decision looks like in the table: granted (set, alg,
    /// lifetime), or refused (status, set label, a part of the message).
    #[derive(Debug, PartialEq)]
    enum Decision {
        Granted(&'static str, Alg, u64),
        Refused(StatusCode, Option<&'static str>, &'static str),
    }
    use Decision::{Granted, Refused};

    fn decide(uid: u32, req: &SignRequest) -> (Decision, String) {
        let policies = policies();
        let peer = peer(uid);
        let grants = peer.grants(&policies);
        match authorize_signature(&policies, &grants, &peer, req) {
            Ok(g) => {
                let set: &'static str = if g.policy.name.as_str() == "default" {
                    "default"
                } else {
                    "partner"
                };
                (Granted(set, g.alg, g.lifetime_s), String::new())
            }
            Err(r) => {
                let set = r.set.map(|s| {
                    if s.as_str() == "default" {
                        "default"
                    } else {
                        "partner"
                    }
                });
                (Refused(r.error.status, set, ""), r.error.message)
            }
        }
    }

    #[test]
    fn signature_requests_are_granted_or_refused_as_the_table_says() {
        let with = |f: fn(&mut SignRequest)| {
            let mut r = request("app", AUD);
            f(&mut r);
            r
        };
        let table: Vec<(&str, u32, SignRequest, Decision)> = vec![
            (
                "defaults: first alg, policy lifetime",
                UID,
                request("app", AUD),
                Granted("default", Alg::Rs384, 300),
            ),
            (
                "ES384 asked",
                UID,
                with(|r| r.alg = Some("ES384".into())),
                Granted("default", Alg::Es384, 300),
            ),
            (
                "own set named",
                UID,
                with(|r| r.set = Some("default".into())),
                Granted("default", Alg::Rs384, 300),
            ),
            (
                "shorter lifetime",
                UID,
                with(|r| r.lifetime_s = Some(30)),
                Granted("default", Alg::Rs384, 30),
            ),
            (
                "lifetime at the policy's bound",
                UID,
                with(|r| r.lifetime_s = Some(300)),
                Granted("default", Alg::Rs384, 300),
            ),
            (
                "caller in no policy",
                9999,
                request("app", AUD),
                Refused(
                    StatusCode::FORBIDDEN,
                    None,
                    "is not listed in any policy's [[callers]]",
                ),
            ),
            (
                "unknown client",
                UID,
                request("nobody", AUD),
                Refused(
                    StatusCode::FORBIDDEN,
                    None,
                    "client_id \"nobody\" is not allowed for this caller (uid 4100, gid 100)",
                ),
            ),
            (
                "known client of another caller: counted as unknown",
                UID,
                request("partner-app", "https://partner.example.com/token"),
                Refused(
                    StatusCode::FORBIDDEN,
                    None,
                    "client_id \"partner-app\" is not allowed for this caller (uid 4100, gid 100)",
                ),
            ),
            (
                "known client of another caller, an unknown set named: the same 403",
                UID,
                SignRequest {
                    set: Some("nope".into()),
                    ..request("partner-app", "https://partner.example.com/token")
                },
                Refused(
                    StatusCode::FORBIDDEN,
                    None,
                    "client_id \"partner-app\" is not allowed for this caller (uid 4100, gid 100)",
                ),
            ),
            (
                "unknown client, an unknown set named: the same 403",
                UID,
                SignRequest {
                    set: Some("nope".into()),
                    ..request("nobody", AUD)
                },
                Refused(
                    StatusCode::FORBIDDEN,
                    None,
                    "client_id \"nobody\" is not allowed for this caller (uid 4100, gid 100)",
                ),
            ),
            (
                "set name malformed",
                UID,
                with(|r| r.set = Some("Bad Name!".into())),
                Refused(StatusCode::BAD_REQUEST, Some("default"), "set: "),
            ),
            (
                "set unknown: as a set that exists but is not the client's",
                UID,
                with(|r| r.set = Some("nope".into())),
                Refused(
                    StatusCode::FORBIDDEN,
                    Some("default"),
                    "client_id \"app\" does not belong to set \"nope\"",
                ),
            ),
            (
                "client of another set",
                UID,
                with(|r| r.set = Some("partner".into())),
                Refused(
                    StatusCode::FORBIDDEN,
                    Some("default"),
                    "client_id \"app\" does not belong to set \"partner\"",
                ),
            ),
            (
                "audience not listed",
                UID,
                request("app", "https://evil.example.com/token"),
                Refused(
                    StatusCode::FORBIDDEN,
                    Some("default"),
                    "audience \"https://evil.example.com/token\" is not allowed for client_id \"app\"",
                ),
            ),
            (
                "alg unknown",
                UID,
                with(|r| r.alg = Some("HS256".into())),
                Refused(StatusCode::BAD_REQUEST, Some("default"), "alg: "),
            ),
            (
                "lifetime zero",
                UID,
                with(|r| r.lifetime_s = Some(0)),
                Refused(
                    StatusCode::BAD_REQUEST,
                    Some("default"),
                    "lifetime_s = 0: must be between 1 and the policy's assertion_lifetime (300)",
                ),
            ),
            (
                "lifetime over the policy's",
                UID,
                with(|r| r.lifetime_s = Some(301)),
                Refused(
                    StatusCode::BAD_REQUEST,
                    Some("default"),
                    "lifetime_s = 301: must be between 1",
                ),
            ),
            (
                "partner: its alg and lifetime",
                ADMIN_UID,
                request("partner-app", "https://partner.example.com/token"),
                Granted("partner", Alg::Es384, 120),
            ),
        ];
        for (name, uid, req, want) in table {
            let (got, message) = decide(uid, &req);
            assert!(
                !message.contains(".toml"),
                "{name}: a file named: {message}"
            );
            match (&want, &got) {
                (Refused(ws, wset, wmsg), Refused(gs, gset, _)) => {
                    assert_eq!((ws, wset), (gs, gset), "{name}: {message}");
                    assert!(message.contains(wmsg), "{name}: {message:?} lacks {wmsg:?}");
                }
                _ => assert_eq!(got, want, "{name}: {message}"),
            }
        }
    }

    #[test]
    fn a_set_the_policy_does_not_use_is_refused_naming_its_algorithms() {
        let policies = policies();
        let peer = peer(ADMIN_UID);
        let grants = peer.grants(&policies);
        let mut req = request("partner-app", "https://partner.example.com/token");
        req.alg = Some("RS384".into());
        let refusal = authorize_signature(&policies, &grants, &peer, &req).unwrap_err();
        assert_eq!(refusal.error.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            refusal.error.message,
            "alg: set partner does not use RS384 (algorithms = [\"ES384\"])"
        );
    }
}
