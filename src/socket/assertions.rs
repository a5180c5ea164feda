//! `POST /v1/assertions`: a SMART Backend Services client assertion
//! (RFC 7523), signed by the active key of the client's set.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use serde::{Deserialize, Serialize};

use super::{ApiError, MAX_BODY, Peer};
use crate::audit::writer::{Receipt, Ticket};
use crate::jose::{AssertionClaims, JwtHeader, encode_jws, new_jti};
use crate::state::Shared;
use crate::types::{Alg, SetName};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssertionRequest {
    client_id: String,
    audience: String,
    alg: Option<String>,
    set: Option<String>,
    lifetime_s: Option<u64>,
}

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

/// Reads a JSON body of at most `MAX_BODY` bytes: 413 above, 400 when it is
/// not the expected JSON (the message names the field and the rule).
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large())?;
    // serde_path_to_error names the field of a type error ("client_id:
    // invalid type ..."), which serde_json alone does not.
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("request body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("request body: {path}: {}", e.inner()))
        }
    })
}

pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Result<Json<AssertionAnswer>, ApiError> {
    let started = Instant::now();
    let now = shared.scheduler.clock().now();
    let mut entry = peer.audit(now.timestamp(), "sign");
    let mut set_label = String::new();
    let mut ticket = None;
    let mut receipt = None;
    let result = sign(
        &shared,
        &peer,
        request.into_body(),
        &mut entry,
        &mut set_label,
        &mut ticket,
        &mut receipt,
    )
    .await;
    match &result {
        Ok(answer) => {
            entry.kid = Some(answer.kid.clone());
            entry.jti = Some(answer.jti.clone());
        }
        Err(e) => {
            tracing::info!(
                uid = peer.uid, gid = peer.gid, pid = ?peer.pid,
                client_id = ?entry.client_id, status = e.status.as_u16(), error = e.code,
                reason = %e.message, "assertion refused"
            );
            entry.outcome = e.code.to_owned();
            entry.detail = Some(e.message.clone());
        }
    }
    // Label values come from the policy, never from the request: a caller
    // must not be able to mint metric series (memory) with made-up ids.
    let client_label = if set_label.is_empty() {
        "unknown"
    } else {
        entry.client_id.as_deref().unwrap_or("unknown")
    };
    shared.metrics.signature(
        if set_label.is_empty() {
            "unknown"
        } else {
            &set_label
        },
        result.as_ref().map(|a| a.alg.as_str()).unwrap_or("unknown"),
        client_label,
        &entry.outcome,
    );
    // No signature leaves without its audit record; a refusal is recorded too.
    let recorded = match (receipt, ticket) {
        // The record went in before the signature was made.
        (Some(receipt), _) => match (receipt.durable().await, &result) {
            (Ok(()), Err(_)) => {
                // It says `ok`, but signing failed after it: the chain must
                // say that this jti was never issued.
                entry.detail = entry.detail.map(|d| {
                    format!("{d}; no assertion was issued (the record before, with this jti, was written before signing)")
                });
                shared.auditor.record(entry).await
            }
            (durable, _) => durable,
        },
        (None, Some(ticket)) => ticket.record(entry).await,
        (None, None) => shared.auditor.record(entry).await,
    };
    if let Err(e) = recorded {
        return Err(ApiError::internal(e));
    }
    shared
        .metrics
        .sign_seconds
        .observe(started.elapsed().as_secs_f64());
    result.map(Json)
}

async fn sign<'s>(
    shared: &'s Shared,
    peer: &Peer,
    body: Body,
    entry: &mut crate::audit::AuditEntry,
    set_label: &mut String,
    ticket: &mut Option<Ticket<'s>>,
    receipt: &mut Option<Receipt>,
) -> Result<AssertionAnswer, ApiError> {
    let policies = shared.scheduler.policies();
    // Who this peer is to the policies, worked out once per request.
    let grants = peer.grants(&policies);
    // Limits first: a flooding caller is turned away before its request
    // costs anything.
    let _slot = shared.caller_limits.admit(peer, &grants)?;
    let req: AssertionRequest = read_json(body).await?;
    // From here on the request only uses the CPU until its entry is handed
    // in (an RSA request hands it in before signing, below): batches may
    // wait for it. Not before: a client that sends its body slowly must not
    // hold them up.
    *ticket = Some(shared.auditor.ticket());
    entry.client_id = Some(req.client_id.clone());
    entry.audience = Some(req.audience.clone());
    // An unknown client and a known client this caller may not use get the
    // same answer: the socket does not tell who else is configured.
    let not_allowed = || {
        ApiError::forbidden(format!(
            "client_id {:?} is not allowed for this caller (uid {}, gid {})",
            req.client_id, peer.uid, peer.gid
        ))
    };
    if grants.is_empty() {
        return Err(ApiError::forbidden(format!(
            "caller uid {} gid {} is not listed in any policy's [[callers]]",
            peer.uid, peer.gid
        )));
    }
    let (policy, client) = policies
        .find_client(&req.client_id)
        .ok_or_else(not_allowed)?;
    *set_label = policy.name.to_string();
    if let Some(set) = &req.set {
        let name = SetName::new(set).map_err(|e| ApiError::bad_request(format!("set: {e}")))?;
        if policies.get(&name).is_none() {
            return Err(ApiError::not_found(format!(
                "set: no key set named {set:?}"
            )));
        }
        if name != policy.name {
            return Err(ApiError::forbidden(format!(
                "client_id {:?} does not belong to set {set:?}",
                req.client_id
            )));
        }
    }
    let allowed = grants
        .iter()
        .any(|(p, c)| p.name == policy.name && c.clients.contains(&req.client_id));
    if !allowed {
        return Err(not_allowed());
    }
    if !client.audiences.iter().any(|a| a == &req.audience) {
        return Err(ApiError::forbidden(format!(
            "audience {:?} is not allowed for client_id {:?} (policy {}: clients.audiences)",
            req.audience,
            req.client_id,
            policy.file.display()
        )));
    }
    let alg = match &req.alg {
        None => policy.algorithms[0],
        Some(a) => a
            .parse::<Alg>()
            .map_err(|e| ApiError::bad_request(format!("alg: {e}")))?,
    };
    if !policy.algorithms.contains(&alg) {
        return Err(ApiError::bad_request(format!(
            "alg: set {} does not use {alg} (algorithms = {:?})",
            policy.name,
            policy
                .algorithms
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
        )));
    }
    let max = policy.assertion_lifetime.as_secs();
    let lifetime = req.lifetime_s.unwrap_or(max);
    if lifetime == 0 || lifetime > max {
        return Err(ApiError::bad_request(format!(
            "lifetime_s = {lifetime}: must be between 1 and the policy's assertion_lifetime ({max})"
        )));
    }
    let snapshot = shared.keyring.snapshot();
    let signer = snapshot
        .sets
        .get(&policy.name)
        .and_then(|s| s.signers.get(&alg))
        .cloned()
        .ok_or_else(|| {
            ApiError::unavailable(format!("set {} has no active {alg} key yet", policy.name))
        })?;
    entry.kid = Some(signer.kid().to_string());
    let now = shared.scheduler.clock().now().timestamp();
    let jti = new_jti().map_err(ApiError::internal)?;
    let jku = client.jku.then(|| shared.jwks_url(&policy.name));
    let header = JwtHeader {
        alg,
        kid: signer.kid().clone(),
        jku,
    };
    let claims = AssertionClaims {
        iss: req.client_id.clone(),
        sub: req.client_id.clone(),
        aud: req.audience.clone(),
        iat: now,
        exp: now + lifetime as i64,
        jti: jti.clone(),
    };
    let assertion = match alg {
        // A P-384 signature is ~70 µs of CPU, about what handing it to
        // another thread and waking this task again costs in futex calls
        // and context switches. It runs here, on the runtime thread (one
        // per core, so still at most one signature per core at once):
        // measured on 2 cores with 64 clients, ES384 went from 6.4k to 10k
        // signatures/s when the hop to the blocking pool was removed.
        Alg::Es384 => encode_jws(&header, &claims, |input| signer.sign(input)),
        // An RSA-4096 signature takes milliseconds: it runs on the signing
        // threads, one per core, so the runtime keeps answering (JWKS,
        // other callers) meanwhile. Its record is handed in first, so that
        // it is made durable together with those of the signatures queued
        // around it (`Auditor::submit_early`); the answer still waits for it.
        Alg::Rs384 => {
            entry.jti = Some(jti.clone());
            let early = entry.clone();
            let handed_in = match ticket.take() {
                Some(ticket) => ticket.submit_early(early).await,
                None => shared.auditor.submit_early(early).await,
            };
            *receipt = Some(handed_in.map_err(ApiError::internal)?);
            shared
                .signers
                .run(move || encode_jws(&header, &claims, |input| signer.sign(input)))
                .await
                .map_err(ApiError::internal)?
        }
    }
    .map_err(ApiError::internal)?;
    Ok(AssertionAnswer {
        assertion,
        client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        kid: entry.kid.clone().unwrap_or_default(),
        alg,
        jti,
        expires_at: now + lifetime as i64,
    })
}
