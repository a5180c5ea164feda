//! The one way the socket signs a JWT, for assertions and for the token
//! broker: the active key of a (set, alg), where its signature runs, and
//! what a failed signature answers.

use std::sync::Arc;

use super::error::ApiError;
use super::state::SocketState;
use crate::jose::{AssertionClaims, JwtHeader, encode_jws};
use crate::keys::{KeyError, SigningKey};
use crate::types::{Alg, SetName};

/// The active key of (`set`, `alg`), or 503 while it has none.
pub(super) fn active_signer(
    state: &SocketState,
    set: &SetName,
    alg: Alg,
) -> Result<Arc<SigningKey>, ApiError> {
    state
        .keyring
        .snapshot()
        .sets
        .get(set)
        .and_then(|s| s.signers.get(&alg))
        .cloned()
        .ok_or_else(|| ApiError::unavailable(format!("set {set} has no active {alg} key yet")))
}

/// The JWT of `header` and `claims` signed by `signer`: inline when that
/// is cheap (a software P-384 key), else on the signing threads (RSA, and
/// every token call, which blocks for milliseconds).
pub(super) async fn sign_jwt(
    state: &SocketState,
    signer: Arc<SigningKey>,
    header: JwtHeader,
    claims: AssertionClaims,
) -> Result<String, ApiError> {
    // A handle for the error path (a reference count, not a copy of the
    // backend's name on every signature).
    let key = Arc::clone(&signer);
    let signed = if signer.signs_inline() {
        encode_jws(&header, &claims, |input| signer.sign(input))
    } else {
        state
            .signers
            .run(move || encode_jws(&header, &claims, |input| signer.sign(input)))
            .await
            .map_err(ApiError::internal)?
    };
    signed.map_err(|e| {
        state.metrics.backend_error(key.backend());
        sign_error(e)
    })
}

/// 503 naming the backend and its trouble when the key's token is out of
/// reach (it is retried, and signing resumes by itself); anything else is
/// an internal error, detailed in the log only.
fn sign_error(e: KeyError) -> ApiError {
    if e.is_unavailable() {
        tracing::warn!(error = %e, "signing refused: key backend unavailable");
        ApiError::unavailable(format!("{e}; signing resumes once it is back"))
    } else {
        ApiError::internal(e)
    }
}
