//! `POST /v1/assertions`: a SMART Backend Services client assertion
//! (RFC 7523), signed by the active key of the client's set.
//!
//! The handler only wires: the check that the caller is listed at all,
//! per-caller limits, the body, the authorization
//! (`authorize`, a pure function), the signature, then the audit record
//! and metrics of whatever happened. No signature leaves without its
//! record; a refusal is recorded too.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use serde::Serialize;

use super::authorize::{SignRequest, authorize_signature};
use super::body::read_json;
use super::error::ApiError;
use super::peer::Peer;
use super::refusals;
use super::signer::{active_signer, sign_jwt};
use super::state::SocketState;
use crate::audit::bounded::{MESSAGE_BYTES, bounded};
use crate::audit::chain::AuditEntry;
use crate::audit::writer::{AuditError, Auditor, Receipt, Ticket};
use crate::jose::{AssertionClaims, JwtHeader, new_jti};
use crate::types::{Alg, SetName};

/// The answer: the JWT plus what a caller needs to use and log it.
#[derive(Debug, Serialize)]
pub struct AssertionAnswer {
    assertion: String,
    client_assertion_type: &'static str,
    kid: String,
    alg: Alg,
    jti: String,
    /// Epoch seconds, = `exp`.
    expires_at: i64,
}

/// How a request's audit record reaches the chain.
enum Record<'s> {
    /// Handed in when the request is answered; batches wait for it (see
    /// `Auditor::ticket`) while the request only uses the CPU.
    Ticket(Ticket<'s>),
    /// Handed in before signing (RSA); the answer waits until it is durable.
    Early(Receipt),
    /// Written when the request is answered, with no ticket out.
    Later,
}

/// What became of one signature request: what the audit record and the
/// metrics need, and the answer.
struct Outcome<'s> {
    entry: AuditEntry,
    /// The client's set, once the client is known (never from the request).
    set: Option<SetName>,
    record: Record<'s>,
    result: Result<AssertionAnswer, ApiError>,
}

pub(super) async fn create(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Result<Json<AssertionAnswer>, ApiError> {
    let started = Instant::now();
    let Outcome {
        mut entry,
        set,
        record,
        result,
    } = sign(&state, &peer, request.into_body()).await;
    match &result {
        Ok(answer) => {
            entry.kid = Some(answer.kid.clone());
            entry.jti = Some(answer.jti.clone());
        }
        Err(e) => {
            entry.outcome = e.code.to_owned();
            // Bounded before the groups go after it: a long message must
            // not push them out of the record.
            entry.explain(bounded(&e.message, MESSAGE_BYTES));
        }
    }
    // Label values come from the policy, never from the request: a caller
    // must not be able to mint metric series (memory) with made-up ids.
    let (set_label, client_label) = match &set {
        Some(set) => (
            set.as_str(),
            entry.client_id.as_deref().unwrap_or("unknown"),
        ),
        None => ("unknown", "unknown"),
    };
    state.metrics.signature(
        set_label,
        result.as_ref().map_or("unknown", |a| a.alg.as_str()),
        client_label,
        &entry.outcome,
    );
    let written = match (&result, record) {
        // Signed, or failed after its record went in: the record's own path.
        (Ok(_), record) | (Err(_), record @ Record::Early(_)) => {
            hand_in(&state.auditor, record, entry, result.is_err()).await
        }
        // Refused: within the caller's budget of refusal records. A ticket
        // is dropped unused first: batches need not wait for a refusal.
        (Err(e), record) => {
            drop(record);
            record_refusal(&state, &peer, entry, e).await
        }
    };
    if let Err(e) = written {
        return Err(ApiError::internal(e));
    }
    state
        .metrics
        .sign_seconds
        .observe(started.elapsed().as_secs_f64());
    result.map(Json)
}

/// Logs and records a refused request, unless its uid is over its budget
/// of refusal records (then it is only counted: `refusals`).
async fn record_refusal(
    state: &SocketState,
    peer: &Peer,
    entry: AuditEntry,
    error: &ApiError,
) -> Result<(), AuditError> {
    let at = entry.at;
    let Some(records) = state.refusals.admit(entry, at) else {
        return Ok(());
    };
    if let Some(r) = records.last() {
        tracing::info!(
            uid = peer.uid, gid = peer.gid, pid = ?peer.pid,
            client_id = ?r.client_id, status = error.status.as_u16(), error = error.code,
            reason = r.detail.as_deref().unwrap_or_default(), "assertion refused"
        );
    }
    refusals::write(&state.auditor, records).await
}

/// Makes `entry` durable in the chain the way `record` says.
async fn hand_in(
    auditor: &Auditor,
    record: Record<'_>,
    mut entry: AuditEntry,
    failed: bool,
) -> Result<(), AuditError> {
    match record {
        Record::Early(receipt) => {
            let durable = receipt.durable().await;
            if durable.is_ok() && failed {
                // The record went in before signing and says `ok`, but
                // signing failed after it: the chain must say that this jti
                // was never issued.
                entry.detail = entry.detail.map(|d| {
                    format!("{d}; no assertion was issued (the record before, with this jti, was written before signing)")
                });
                return auditor.record(entry).await;
            }
            durable
        }
        Record::Ticket(ticket) => ticket.record(entry).await,
        Record::Later => auditor.record(entry).await,
    }
}

/// Admits, reads, authorizes and signs one request.
async fn sign<'s>(state: &'s SocketState, peer: &Peer, body: Body) -> Outcome<'s> {
    let now = state.clock.now().timestamp();
    let mut entry = peer.audit(now, "sign");
    let refused = |entry, set, record, error| Outcome {
        entry,
        set,
        record,
        result: Err(error),
    };
    let policies = state.policies.current();
    // Who this peer is to the policies, worked out once per request.
    let grants = peer.grants(&policies);
    // A peer no policy lists is refused before its body is read: it must
    // not be able to hold a connection by sending its body slowly, nor
    // anything else of its request cost more than this answer.
    if grants.is_empty() {
        let e = ApiError::forbidden(format!(
            "caller uid {} gid {} is not listed in any policy's [[callers]]",
            peer.uid, peer.gid
        ));
        return refused(entry, None, Record::Later, e);
    }
    // Limits next: a flooding caller waits in its own queue or is turned
    // away before its request costs anything. The slot is held until the
    // signature is made.
    let _slot = match state.limits.admit(peer, &grants).await {
        Ok(slot) => slot,
        Err(e) => return refused(entry, None, Record::Later, e),
    };
    let req: SignRequest = match read_json(body).await {
        Ok(req) => req,
        Err(e) => return refused(entry, None, Record::Later, e),
    };
    // From here on the request only uses the CPU until its entry is handed
    // in: batches may wait for it. Not before: a client that sends its body
    // slowly must not hold them up.
    let ticket = state.auditor.ticket();
    entry.client_id = Some(req.client_id.clone());
    entry.audience = Some(req.audience.clone());
    let grant = match authorize_signature(&policies, &grants, peer, &req) {
        Ok(grant) => grant,
        Err(r) => return refused(entry, r.set, Record::Ticket(ticket), r.error),
    };
    let set = Some(grant.policy.name.clone());
    let signer = match active_signer(state, &grant.policy.name, grant.alg) {
        Ok(signer) => signer,
        Err(e) => return refused(entry, set, Record::Ticket(ticket), e),
    };
    let kid = signer.kid().to_string();
    entry.kid = Some(kid.clone());
    let jti = match new_jti() {
        Ok(jti) => jti,
        Err(e) => return refused(entry, set, Record::Ticket(ticket), ApiError::internal(e)),
    };
    let now = state.clock.now().timestamp();
    let header = JwtHeader {
        alg: grant.alg,
        kid: signer.kid().clone(),
        jku: grant
            .client
            .jku
            .then(|| state.public_url.jwks_url(&grant.policy.name)),
    };
    let expires_at = now + grant.lifetime_s as i64;
    let claims = AssertionClaims {
        iss: req.client_id.clone(),
        sub: req.client_id.clone(),
        aud: req.audience.clone(),
        iat: now,
        exp: expires_at,
        jti: jti.clone(),
    };
    let (signed, record) = if signer.signs_inline() {
        // A software P-384 signature costs about what handing it to
        // another thread and waking this task again costs
        // (BENCHMARKS.md): it runs here, on the runtime thread, one per
        // core, so still at most one signature per core at once.
        (
            sign_jwt(state, signer, header, claims).await,
            Record::Ticket(ticket),
        )
    } else {
        // An RSA or token signature takes milliseconds: it runs on the
        // signing threads so the runtime keeps answering meanwhile. Its
        // record is handed in first, so that it is made durable together
        // with those of the signatures queued around it
        // (`Auditor::submit_early`); the answer still waits for it.
        entry.jti = Some(jti.clone());
        match ticket.submit_early(entry.clone()).await {
            Ok(receipt) => (
                sign_jwt(state, signer, header, claims).await,
                Record::Early(receipt),
            ),
            Err(e) => (Err(ApiError::internal(e)), Record::Later),
        }
    };
    let result = signed.map(|assertion| AssertionAnswer {
        assertion,
        client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        kid,
        alg: grant.alg,
        jti,
        expires_at,
    });
    Outcome {
        entry,
        set,
        record,
        result,
    }
}
