//! `POST /v1/tokens` and `DELETE /v1/tokens`: access tokens over the
//! socket (DESIGN §6).
//!
//! The caller is authorized exactly as for an assertion (`authorize`, with
//! `token_url` as the audience), and its `scope` must be a subset of the
//! client's `scopes`. Then the cache (`tokens::cache`) answers, calling the
//! token endpoint through `tokens::upstream` with an assertion signed
//! here. Each upstream call is audited (never the token); refusals go
//! through the per-uid budget like those of assertions.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use super::authorize::{SignGrant, SignRequest, authorize_signature};
use super::body::read_json;
use super::error::ApiError;
use super::peer::Peer;
use super::refusals;
use super::signer::{active_signer, sign_jwt};
use super::state::SocketState;
use crate::audit::bounded::{MESSAGE_BYTES, bounded};
use crate::audit::chain::AuditEntry;
use crate::config::policy::is_scope_token;
use crate::jose::{AssertionClaims, JwtHeader, new_jti};
use crate::tokens::cache::{Ask, CacheError, CallKind, FetchError, Fetched, Key};
use crate::tokens::token::ScopeSet;
use crate::tokens::upstream::UpstreamError;
use crate::types::Alg;

/// `min_ttl_s` when the caller does not say: enough for one FHIR call.
pub const DEFAULT_MIN_TTL_S: u64 = 30;
/// Largest `min_ttl_s`: a day.
pub const MAX_MIN_TTL_S: u64 = 86_400;

/// The body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    client_id: String,
    token_url: String,
    scope: String,
    min_ttl_s: Option<u64>,
    set: Option<String>,
    alg: Option<String>,
}

/// The body of `DELETE /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {
    client_id: String,
    token_url: String,
    scope: String,
}

/// The answer (DESIGN §6).
#[derive(Serialize)]
pub struct TokenAnswer {
    access_token: String,
    token_type: &'static str,
    /// Epoch seconds.
    expires_at: i64,
    scope: String,
    cached: bool,
    kid: String,
}

/// A failed token request: the socket's error shape, plus the token
/// endpoint's status and OAuth error when it answered.
#[derive(Debug)]
pub struct TokenError {
    status: StatusCode,
    code: &'static str,
    message: String,
    upstream_status: Option<u16>,
    oauth_error: Option<String>,
    oauth_error_description: Option<String>,
    retry_after: Option<u64>,
}

impl From<ApiError> for TokenError {
    fn from(e: ApiError) -> Self {
        TokenError {
            status: e.status,
            code: e.code,
            message: e.message,
            upstream_status: None,
            oauth_error: None,
            oauth_error_description: None,
            retry_after: None,
        }
    }
}

impl TokenError {
    fn upstream(e: &UpstreamError, retry_after: Option<u64>, message: String) -> Self {
        let (status, code) = match e {
            UpstreamError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "token_endpoint_timeout"),
            _ => (StatusCode::BAD_GATEWAY, "token_endpoint_refused"),
        };
        let (oauth_error, oauth_error_description) = match e {
            UpstreamError::Refused {
                oauth_error,
                oauth_error_description,
                ..
            } => (oauth_error.clone(), oauth_error_description.clone()),
            _ => (None, None),
        };
        TokenError {
            status,
            code,
            message,
            upstream_status: e.status(),
            oauth_error,
            oauth_error_description,
            retry_after,
        }
    }

    fn from_cache(e: CacheError, now: i64) -> Self {
        match &e {
            CacheError::Fetch(FetchError::Upstream(up)) => {
                let retry = up.retry_after().map(|d| d.as_secs());
                TokenError::upstream(up, retry, e.to_string())
            }
            CacheError::Fetch(FetchError::Assertion {
                status,
                code,
                message,
            }) => TokenError {
                status: StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                ..TokenError::from(ApiError::unavailable(message.clone()))
            }
            .with_code(code),
            CacheError::BackingOff { until, cause } => {
                let wait = (until.timestamp() - now).max(1) as u64;
                TokenError::upstream(cause, Some(wait), e.to_string())
            }
            CacheError::RateCapped { retry_after, .. } => TokenError {
                retry_after: Some(retry_after.as_secs()),
                ..TokenError::from(ApiError::too_many(e.to_string()))
            },
            CacheError::TooShort { .. } => TokenError {
                status: StatusCode::BAD_GATEWAY,
                code: "token_endpoint_refused",
                ..TokenError::from(ApiError::bad_request(e.to_string()))
            },
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if self.code == "token_endpoint_refused" || self.code == "token_endpoint_timeout" {
            body["status"] = self.upstream_status.into();
            body["oauth_error"] = self.oauth_error.into();
            body["oauth_error_description"] = self.oauth_error_description.into();
        }
        let mut r = (self.status, Json(body)).into_response();
        let retry = self.retry_after.or(matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
        .then_some(2));
        if let Some(s) = retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// What a request was granted: the client's set, its entry, the key it
/// caches under.
struct Granted {
    set: crate::types::SetName,
    client_id: String,
    jku: Option<String>,
    alg: Alg,
    lifetime_s: u64,
    per_minute: u32,
    key: Key,
}

/// Authorizes a token request like an assertion for `token_url`, then
/// checks its scopes against the client's `scopes`.
fn authorize(
    state: &SocketState,
    peer: &Peer,
    client_id: &str,
    token_url: &str,
    scope: &str,
    set: Option<String>,
    alg: Option<String>,
) -> Result<Granted, (ApiError, Option<crate::types::SetName>)> {
    let policies = state.policies.current();
    let grants = peer.grants(&policies);
    let req = SignRequest {
        client_id: client_id.to_owned(),
        audience: token_url.to_owned(),
        alg,
        set,
        lifetime_s: None,
    };
    let SignGrant {
        policy,
        client,
        alg,
        lifetime_s,
    } = authorize_signature(&policies, &grants, peer, &req).map_err(|r| (r.error, r.set))?;
    let set = policy.name.clone();
    let refuse = |e: ApiError| (e, Some(set.clone()));
    if let Some(bad) = scope
        .split(' ')
        .find(|s| !s.is_empty() && !is_scope_token(s))
    {
        return Err(refuse(ApiError::bad_request(format!(
            "scope: {bad:?} is not a scope token (printable ASCII without '\"' or '\\'; scopes are separated by spaces)"
        ))));
    }
    let scopes = ScopeSet::parse(scope);
    if scopes.is_empty() {
        return Err(refuse(ApiError::bad_request(
            "scope: must name at least one scope",
        )));
    }
    let allowed: ScopeSet = client.scopes.iter().cloned().collect();
    if !scopes.is_subset_of(&allowed) {
        let outside: Vec<_> = scopes.outside(&allowed).collect();
        return Err(refuse(ApiError::forbidden(format!(
            "scope {:?} is not allowed for client_id {client_id:?} (clients.scopes of set {})",
            outside.join(" "),
            policy.name
        ))));
    }
    Ok(Granted {
        key: Key {
            set: policy.name.as_str().to_owned(),
            client_id: client.client_id.clone(),
            token_url: token_url.to_owned(),
            scopes,
        },
        jku: client.jku.then(|| state.public_url.jwks_url(&policy.name)),
        client_id: client.client_id.clone(),
        set,
        alg,
        lifetime_s,
        per_minute: client.token_requests_per_minute,
    })
}

/// Logs and records a refused token request within the uid's budget.
async fn refuse(
    state: &SocketState,
    peer: &Peer,
    mut entry: AuditEntry,
    error: &ApiError,
) -> Result<(), ApiError> {
    entry.outcome = error.code.to_owned();
    entry.explain(bounded(&error.message, MESSAGE_BYTES));
    let at = entry.at;
    let Some(records) = state.refusals.admit(entry, at) else {
        return Ok(());
    };
    tracing::info!(
        uid = peer.uid, gid = peer.gid, pid = ?peer.pid,
        status = error.status.as_u16(), error = error.code, "token request refused"
    );
    refusals::write(&state.auditor, records)
        .await
        .map_err(ApiError::internal)
}

/// 403 for a peer in no `[[callers]]` entry, recorded (within its budget).
async fn refuse_unlisted(state: &SocketState, peer: &Peer, entry: AuditEntry) -> TokenError {
    let e = ApiError::forbidden(format!(
        "caller uid {} gid {} is not listed in any policy's [[callers]]",
        peer.uid, peer.gid
    ));
    match refuse(state, peer, entry, &e).await {
        Ok(()) => e.into(),
        Err(failed) => failed.into(),
    }
}

/// Admission of a token request, recorded as `action`: a peer no policy
/// lists is refused before its body is read (it must not hold a
/// connection by sending it slowly), then the caller's limits (the slot is
/// held until the answer), then the JSON body; each refusal is recorded.
async fn admitted<T: serde::de::DeserializeOwned>(
    state: &SocketState,
    peer: &Peer,
    action: &str,
    request: Request,
) -> Result<(AuditEntry, T, Option<OwnedSemaphorePermit>), TokenError> {
    let entry = peer.audit(state.clock.now().timestamp(), action);
    let policies = state.policies.current();
    let grants = peer.grants(&policies);
    if grants.is_empty() {
        return Err(refuse_unlisted(state, peer, entry).await);
    }
    let slot = match state.limits.admit(peer, &grants).await {
        Ok(slot) => slot,
        Err(e) => {
            refuse(state, peer, entry, &e).await?;
            return Err(e.into());
        }
    };
    drop(grants);
    match read_json(request.into_body()).await {
        Ok(r) => Ok((entry, r, slot)),
        Err(e) => {
            refuse(state, peer, entry, &e).await?;
            Err(e.into())
        }
    }
}

pub(super) async fn create(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Result<Json<TokenAnswer>, TokenError> {
    let (mut entry, req, _slot): (_, TokenRequest, _) =
        admitted(&state, &peer, "token", request).await?;
    entry.client_id = Some(req.client_id.clone());
    entry.audience = Some(req.token_url.clone());
    let min_ttl_s = req.min_ttl_s.unwrap_or(DEFAULT_MIN_TTL_S);
    let granted = match authorize(
        &state,
        &peer,
        &req.client_id,
        &req.token_url,
        &req.scope,
        req.set,
        req.alg,
    ) {
        Ok(g) if min_ttl_s > MAX_MIN_TTL_S => Err((
            ApiError::bad_request(format!(
                "min_ttl_s = {min_ttl_s}: must be at most {MAX_MIN_TTL_S}"
            )),
            Some(g.set),
        )),
        other => other,
    };
    let granted = match granted {
        Ok(g) => g,
        Err((e, _set)) => {
            refuse(&state, &peer, entry, &e).await?;
            return Err(e.into());
        }
    };
    let client = granted.client_id.clone();
    let ask = Ask {
        min_ttl_s,
        per_minute: granted.per_minute,
    };
    let key = granted.key.clone();
    let fetch = fetcher(state.clone(), peer.clone(), granted);
    let metrics = state.metrics.clone();
    let label = client.clone();
    let on_call = move |kind: CallKind, result: &Result<Fetched, FetchError>| {
        if let CallKind::Refresh = kind {
            metrics.tokens.cache(&label, "refresh");
        }
        if let Err(e) = result {
            metrics.tokens.upstream_error(&label, &error_label(e));
        }
    };
    match state.tokens.get(key, ask, fetch, on_call).await {
        Ok(served) => {
            state
                .metrics
                .tokens
                .cache(&client, if served.cached { "hit" } else { "miss" });
            let e = &served.entry;
            Ok(Json(TokenAnswer {
                access_token: e.token.expose().to_owned(),
                token_type: "Bearer",
                expires_at: e.expires_at.timestamp(),
                scope: e.scope.to_string(),
                cached: served.cached,
                kid: e.kid.clone(),
            }))
        }
        Err(e) => {
            if !matches!(e, CacheError::Fetch(_)) {
                // Fetch failures are audited with their upstream call;
                // these made none.
                let api = ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    code: "token_unavailable",
                    message: e.to_string(),
                };
                refuse(&state, &peer, entry, &api).await?;
            }
            Err(TokenError::from_cache(e, state.clock.now().timestamp()))
        }
    }
}

pub(super) async fn forget(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Result<StatusCode, TokenError> {
    // Within the caller's limits, as a token request: forgetting makes
    // the next request call upstream, which is what the limits guard.
    let (mut entry, req, _slot): (_, ForgetRequest, _) =
        admitted(&state, &peer, "token_forget", request).await?;
    entry.client_id = Some(req.client_id.clone());
    entry.audience = Some(req.token_url.clone());
    match authorize(
        &state,
        &peer,
        &req.client_id,
        &req.token_url,
        &req.scope,
        None,
        None,
    ) {
        Ok(g) => {
            state.tokens.forget(&g.key);
            // Who forced the next upstream call is on record.
            entry.explain(format!("scope {:?}", g.key.scopes.to_string()));
            state
                .auditor
                .record(entry)
                .await
                .map_err(ApiError::internal)?;
            Ok(StatusCode::NO_CONTENT)
        }
        Err((e, _)) => {
            refuse(&state, &peer, entry, &e).await?;
            Err(e.into())
        }
    }
}

/// The metric label of a failed call: from a fixed set, never text the
/// endpoint chose.
fn error_label(e: &FetchError) -> String {
    const OAUTH: &[&str] = &[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "temporarily_unavailable",
        "server_error",
        "access_denied",
    ];
    match e {
        FetchError::Assertion { .. } => "assertion".into(),
        FetchError::Upstream(up) => match up {
            UpstreamError::Url(_) => "url".into(),
            UpstreamError::Connect(_) => "connect".into(),
            UpstreamError::Timeout(_) => "timeout".into(),
            UpstreamError::TooLarge { .. } => "too_large".into(),
            UpstreamError::Refused {
                oauth_error: Some(o),
                ..
            } => match OAUTH.iter().find(|k| **k == o) {
                Some(k) => (*k).into(),
                None => "other_oauth_error".into(),
            },
            UpstreamError::Refused { status: 200, .. } => "bad_answer".into(),
            UpstreamError::Refused { status, .. } => format!("http_{status}"),
        },
    }
}

/// The fetch the cache calls (also from a background refresh): signs an
/// assertion for the token URL, posts it, audits the call.
fn fetcher(
    state: SocketState,
    peer: Peer,
    granted: Granted,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<Fetched, FetchError>> + Send>>
+ Send
+ Sync
+ 'static {
    let granted = Arc::new(granted);
    move || {
        let (state, peer, granted) = (state.clone(), peer.clone(), granted.clone());
        // A task of its own: once an assertion is signed, the upstream
        // call and its record finish even if the request that started
        // them is dropped (client gone, request deadline).
        Box::pin(async move {
            tokio::spawn(async move { fetch_once(&state, &peer, &granted).await })
                .await
                .unwrap_or_else(|e| {
                    Err(FetchError::Assertion {
                        status: 500,
                        code: "internal",
                        message: ApiError::internal(e).message,
                    })
                })
        })
    }
}

async fn fetch_once(
    state: &SocketState,
    peer: &Peer,
    granted: &Granted,
) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let mut entry = peer.audit(state.clock.now().timestamp(), "token");
    entry.client_id = Some(granted.client_id.clone());
    entry.audience = Some(granted.key.token_url.clone());
    let assertion = mint(state, granted).await;
    let result = match &assertion {
        Ok((jwt, kid, jti)) => {
            entry.kid = Some(kid.clone());
            entry.jti = Some(jti.clone());
            // No signature leaves without its record: the assertion is
            // recorded before it is posted; the call's outcome follows.
            let mut signed = entry.clone();
            signed.action = "token_assertion".to_owned();
            signed.explain(format!(
                "assertion signed for the token endpoint, scope asked {:?}",
                granted.key.scopes.to_string()
            ));
            if let Err(e) = state.auditor.record(signed).await {
                return Err(FetchError::Assertion {
                    status: 500,
                    code: "internal",
                    message: ApiError::internal(e).message,
                });
            }
            state
                .upstream
                .fetch(&granted.key.token_url, jwt, &granted.key.scopes)
                .await
                .map(|grant| Fetched {
                    grant,
                    kid: kid.clone(),
                })
                .map_err(FetchError::from)
        }
        Err(e) => Err(e.clone()),
    };
    state
        .metrics
        .tokens
        .upstream_seconds
        .observe(started.elapsed().as_secs_f64());
    let asked = granted.key.scopes.to_string();
    let detail = match &result {
        Ok(f) => {
            format!(
                "scope asked {asked:?}, granted {:?}; upstream status 200; expires_in {}",
                f.grant.scope.to_string(),
                f.grant.expires_in
            )
        }
        Err(e) => {
            let status = match e {
                FetchError::Upstream(up) => {
                    up.status().map_or("none".to_owned(), |s| s.to_string())
                }
                FetchError::Assertion { .. } => "none (no assertion)".to_owned(),
            };
            entry.outcome = match e {
                FetchError::Upstream(UpstreamError::Timeout(_)) => "token_endpoint_timeout",
                FetchError::Upstream(_) => "token_endpoint_refused",
                FetchError::Assertion { code, .. } => code,
            }
            .to_owned();
            bounded(
                &format!("scope asked {asked:?}; upstream status {status}; {e}"),
                MESSAGE_BYTES,
            )
            .into_owned()
        }
    };
    entry.explain(detail);
    if result.is_err() {
        tracing::warn!(
            client_id = %granted.client_id, token_url = %granted.key.token_url,
            error = %entry.detail.as_deref().unwrap_or_default(), "token request failed upstream"
        );
    }
    if let Err(e) = state.auditor.record(entry).await {
        // No token leaves without its record.
        return Err(FetchError::Assertion {
            status: 500,
            code: "internal",
            message: ApiError::internal(e).message,
        });
    }
    result
}

/// Signs an assertion for the granted client and token URL: (JWT, kid, jti).
async fn mint(state: &SocketState, g: &Granted) -> Result<(String, String, String), FetchError> {
    let failed = |e: ApiError| FetchError::Assertion {
        status: e.status.as_u16(),
        code: e.code,
        message: e.message,
    };
    let signer = active_signer(state, &g.set, g.alg).map_err(failed)?;
    let kid = signer.kid().to_string();
    let jti = new_jti().map_err(|e| failed(ApiError::internal(e)))?;
    let now = state.clock.now().timestamp();
    let header = JwtHeader {
        alg: g.alg,
        kid: signer.kid().clone(),
        jku: g.jku.clone(),
    };
    let claims = AssertionClaims {
        iss: g.client_id.clone(),
        sub: g.client_id.clone(),
        aud: g.key.token_url.clone(),
        iat: now,
        exp: now + g.lifetime_s as i64,
        jti: jti.clone(),
    };
    let jwt = sign_jwt(state, signer, header, claims)
        .await
        .map_err(failed)?;
    Ok((jwt, kid, jti))
}
