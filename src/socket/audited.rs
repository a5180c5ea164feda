//! The audit record of an admin or listing request: what was asked, and,
//! for a refusal, why. Signature requests have their own path (records
//! handed in early, tickets): `assertions`.

use super::error::ApiError;
use super::peer::Peer;
use super::refusals;
use super::state::SocketState;
use crate::audit::bounded::{MESSAGE_BYTES, bounded};
use crate::audit::chain::AuditEntry;

/// Records `entry` with the outcome of `result` (a refusal is logged too,
/// within the caller's refusal budget: `refusals`), then returns the
/// result; a record that cannot be written fails the request, since
/// nothing is answered without its record.
pub async fn audited<T>(
    state: &SocketState,
    mut entry: AuditEntry,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match &result {
        Ok(_) => state
            .auditor
            .record(entry)
            .await
            .map_err(ApiError::internal)?,
        Err(e) => {
            entry.outcome = e.code.to_owned();
            entry.explain(bounded(&e.message, MESSAGE_BYTES));
            let at = entry.at;
            if let Some(records) = state.refusals.admit(entry, at) {
                if let Some(r) = records.last() {
                    tracing::info!(
                        uid = r.uid, action = %r.action, status = e.status.as_u16(),
                        error = e.code, reason = r.detail.as_deref().unwrap_or_default(),
                        "socket request refused"
                    );
                }
                refusals::write(&state.auditor, records)
                    .await
                    .map_err(ApiError::internal)?;
            }
        }
    }
    result
}

/// The answer to a peer no policy lists, on a route that only reads
/// (`GET /v1/keys`, its timeline): a recorded refusal. Listing public keys
/// is no event, so only refusals are recorded there.
pub async fn refuse_unlisted<T>(
    state: &SocketState,
    peer: &Peer,
    action: &str,
) -> Result<T, ApiError> {
    let err = ApiError::forbidden(format!(
        "caller uid {} gid {} is not listed in any policy's [[callers]]",
        peer.uid, peer.gid
    ));
    let entry = peer.audit(state.clock.now().timestamp(), action);
    audited(state, entry, Err(err)).await
}
