//! Admin requests: rotate, revoke, and the audit trail. Only callers marked
//! `admin = true` in the policy of the set concerned; to an admin, a set or
//! kid of a set it is not an admin of is answered as one that does not
//! exist, and the audit trail shows it its own sets' records
//! (`audit_scope`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use serde::{Deserialize, Serialize};

use super::audit_scope::AuditScope;
use super::audited::audited;
use super::body::read_json;
use super::error::ApiError;
use super::peer::Peer;
use super::state::SocketState;
use crate::audit::chain::{AuditRecord, Witness, check_witness, verify_stored};
use crate::audit::key::ChainKeys;
use crate::lifecycle::executor::{LifecycleError, RevokeOutcome};
use crate::types::{Alg, Kid, SetName};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    set: String,
    alg: Option<String>,
    #[serde(default)]
    now: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    kid: String,
}

fn lifecycle_error(e: LifecycleError) -> ApiError {
    match e {
        LifecycleError::UnknownSet(s) => {
            ApiError::not_found(format!("set: no key set named {s:?}"))
        }
        LifecycleError::UnknownKid(k) => ApiError::not_found(format!("kid: no key {k:?}")),
        LifecycleError::AlgNotInSet { set, alg } => {
            ApiError::bad_request(format!("alg: set {set} does not use {alg}"))
        }
        LifecycleError::Conflict(m) => ApiError::conflict(m),
        other => ApiError::internal(other),
    }
}

fn not_admin(peer: &Peer, what: &str) -> ApiError {
    ApiError::forbidden(format!(
        "caller uid {} gid {} is not an admin of {what}",
        peer.uid, peer.gid
    ))
}

/// With `alg`, the answer is that algorithm's outcome; without, the set's
/// every algorithm rotated, and the answer is the array of their outcomes
/// in the policy's order.
pub(super) async fn rotate(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut entry = peer.audit(state.clock.now().timestamp(), "rotate");
    let result = async {
        require_any_admin(&state, &peer)?;
        let req: RotateRequest = read_json(request.into_body()).await?;
        let set = SetName::new(&req.set).map_err(|e| ApiError::bad_request(format!("set: {e}")))?;
        let policies = state.policies.current();
        // A set this caller is not an admin of gets the answer of a set
        // that does not exist: admins of one set learn nothing of others.
        policies
            .get(&set)
            .filter(|policy| peer.is_admin_of(policy))
            .ok_or_else(|| ApiError::not_found(format!("set: no key set named {:?}", req.set)))?;
        let alg = req
            .alg
            .as_deref()
            .map(str::parse::<Alg>)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("alg: {e}")))?;
        let algs = alg.map_or_else(|| "every alg".to_owned(), |a| a.as_str().to_owned());
        let why = format!("set {set} {algs} now={}", req.now);
        let rotated = state.lifecycle.rotate(&set, alg, req.now).await;
        let (outcomes, _events) = match rotated {
            Ok(done) => done,
            Err(e) => {
                entry.explain(why);
                return Err(lifecycle_error(e));
            }
        };
        state.keyring.refresh().await.map_err(ApiError::internal)?;
        let kids: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.activated.as_ref().or(o.pending.as_ref()))
            .map(Kid::to_string)
            .collect();
        // The record's kid is one kid; a rotation of the whole set names
        // the others in its detail.
        entry.kid = kids.first().cloned();
        entry.explain(if kids.len() > 1 {
            format!("{why}: {}", kids.join(", "))
        } else {
            why
        });
        let answer = match (alg, &outcomes[..]) {
            (Some(_), [one]) => serde_json::to_value(one),
            _ => serde_json::to_value(&outcomes),
        };
        answer.map_err(ApiError::internal)
    }
    .await;
    audited(&state, entry, result).await.map(Json)
}

pub(super) async fn revoke(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut entry = peer.audit(state.clock.now().timestamp(), "revoke");
    let result = async {
        // Non-admins learn nothing about which sets or kids exist.
        require_any_admin(&state, &peer)?;
        let req: RevokeRequest = read_json(request.into_body()).await?;
        let snapshot = state.keyring.snapshot();
        let policies = state.policies.current();
        // A key of a set this caller is not an admin of gets the answer of
        // a kid that does not exist. The record names a kid only once it is
        // a key of the caller's sets (audit reads are scoped by it); the
        // refusal's message says what was asked.
        let key = snapshot
            .keys
            .iter()
            .find(|k| k.kid.as_str() == req.kid)
            .filter(|k| policies.get(&k.set).is_some_and(|p| peer.is_admin_of(p)))
            .ok_or_else(|| ApiError::not_found(format!("kid: no key {:?}", req.kid)))?;
        entry.kid = Some(req.kid.clone());
        let (outcome, _events): (RevokeOutcome, _) = state
            .lifecycle
            .revoke(&key.kid)
            .await
            .map_err(lifecycle_error)?;
        // Answer only once the key is out of this replica's JWKS.
        state.keyring.refresh().await.map_err(ApiError::internal)?;
        Ok(serde_json::json!({
            "kid": outcome.kid,
            "state": "revoked",
            "activated": outcome.activated,
            "handover": outcome.handover,
        }))
    }
    .await;
    audited(&state, entry, result).await.map(Json)
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
}

fn require_any_admin(state: &SocketState, peer: &Peer) -> Result<(), ApiError> {
    let policies = state.policies.current();
    if policies.iter().any(|p| peer.is_admin_of(p)) {
        Ok(())
    } else {
        Err(not_admin(peer, "any key set"))
    }
}

pub(super) async fn audit_tail(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let entry = peer.audit(state.clock.now().timestamp(), "audit");
    // A bad query string is a 400 in the error shape, after the admin check
    // (axum's own rejection is plain text).
    let allowed = require_any_admin(&state, &peer).and_then(|()| {
        query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
    });
    let Query(q) = audited(&state, entry, allowed).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 100_000);
    let policies = state.policies.current();
    let scope = AuditScope::of(&peer, &policies).ok_or_else(|| not_admin(&peer, "any key set"))?;
    // The newest `limit` records this admin may see: read further back
    // while the ones read hold too few of them.
    let mut read = limit;
    loop {
        let records = state
            .store
            .audit_tail(read)
            .await
            .map_err(ApiError::internal)?;
        let all_read = records.len() < read as usize || read >= SCOPED_SCAN_MAX;
        let mut shown: Vec<AuditRecord> = records
            .into_iter()
            .filter(|r| scope.sees(&r.entry, &policies))
            .collect();
        if shown.len() >= limit as usize || all_read {
            let extra = shown.len().saturating_sub(limit as usize);
            shown.drain(..extra);
            return Ok(Json(shown));
        }
        read = read.saturating_mul(8).min(SCOPED_SCAN_MAX.max(limit));
    }
}

/// How far back `GET /v1/audit` reads for an admin of some sets only: its
/// records among the newest this many. The store has no per-set index of
/// records, and an unbounded scan would load the whole trail into memory
/// for one request.
const SCOPED_SCAN_MAX: u32 = 200_000;

/// What `audit verify` reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyAnswer {
    pub ok: bool,
    pub records: usize,
    /// Records of the unkeyed chain from before the upgrade (checked by
    /// hash, bound by the first keyed record).
    #[serde(default)]
    pub unkeyed: usize,
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyQuery {
    /// A witness `SEQ:MAC` from `audit head`.
    head: Option<String>,
}

pub(super) async fn audit_verify(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    query: Result<Query<VerifyQuery>, QueryRejection>,
) -> Result<Json<VerifyAnswer>, ApiError> {
    let entry = peer.audit(state.clock.now().timestamp(), "audit");
    let allowed = require_any_admin(&state, &peer).and_then(|()| {
        let Query(q) =
            query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
        q.head
            .as_deref()
            .map(str::parse::<Witness>)
            .transpose()
            .map_err(ApiError::bad_request)
    });
    let witness = audited(&state, entry, allowed).await?;
    let records = state.store.audit_all().await.map_err(ApiError::internal)?;
    let anchor = state
        .store
        .audit_anchor()
        .await
        .map_err(ApiError::internal)?;
    let wraps = state
        .store
        .audit_key_wraps()
        .await
        .map_err(ApiError::internal)?;
    let chain = state.auditor.chain();
    let keys = ChainKeys::resolve(&chain.key, &wraps);
    let verified = verify_stored(&keys, chain.retention, anchor.as_ref(), &records)
        .map_err(|e| e.to_string())
        .and_then(|v| match &witness {
            Some(w) => check_witness(w, anchor.as_ref(), &records)
                .map(|()| v)
                .map_err(|e| e.to_string()),
            None => Ok(v),
        });
    let mut answer = match verified {
        Ok(v) => VerifyAnswer {
            ok: true,
            records: v.records,
            unkeyed: v.unkeyed,
            error: None,
        },
        Err(e) => VerifyAnswer {
            ok: false,
            records: records.len(),
            unkeyed: 0,
            error: Some(e),
        },
    };
    // Cutting records off the end leaves a valid shorter chain; this process
    // knows the newest record it wrote and whether the chain ever shrank.
    let (newest, cut) = state.auditor.head();
    if answer.ok {
        if let Some(msg) = cut {
            answer.ok = false;
            answer.error = Some(msg);
        } else if let Some((seq, hash)) = newest
            && records
                .iter()
                .find(|r| r.seq == seq)
                .is_none_or(|r| r.hash != hash)
        {
            answer.ok = false;
            answer.error = Some(format!(
                "audit record {seq}, written by this daemon, is missing or changed: the newest records were deleted"
            ));
        }
    }
    Ok(Json(answer))
}

/// What `audit head` prints: the newest record's seq and MAC.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeadAnswer {
    pub seq: i64,
    pub mac: String,
    /// `SEQ:MAC`, as `audit verify --head` takes it.
    pub head: String,
}

pub(super) async fn audit_head(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<HeadAnswer>, ApiError> {
    let entry = peer.audit(state.clock.now().timestamp(), "audit");
    let allowed = require_any_admin(&state, &peer);
    // The request's own record is the head it answers with.
    audited(&state, entry, allowed).await?;
    let newest = state
        .store
        .audit_tail(1)
        .await
        .map_err(ApiError::internal)?;
    let r = newest
        .last()
        .ok_or_else(|| ApiError::internal("the audit chain is empty"))?;
    let witness = Witness {
        seq: r.seq,
        mac: r.hash.clone(),
    };
    Ok(Json(HeadAnswer {
        seq: r.seq,
        mac: r.hash.clone(),
        head: witness.to_string(),
    }))
}
