//! The audit record of an admin or listing request: what was asked, and,
//! for a refusal, why. Signature requests have their own path (records
//! handed in early, tickets): `assertions`.

use super::error::ApiError;
use crate::audit::chain::AuditEntry;
use crate::audit::writer::Auditor;

/// Records `entry` with the outcome of `result` (a refusal is logged too),
/// then returns the result; a record that cannot be written fails the
/// request, since nothing is answered without its record.
pub async fn audited<T>(
    auditor: &Auditor,
    mut entry: AuditEntry,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(e) = &result {
        tracing::info!(
            uid = entry.uid, action = %entry.action, status = e.status.as_u16(),
            error = e.code, reason = %e.message, "socket request refused"
        );
        entry.outcome = e.code.to_owned();
        entry.detail = Some(e.message.clone());
    }
    auditor.record(entry).await.map_err(ApiError::internal)?;
    result
}
