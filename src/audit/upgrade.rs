//! The daemon's chores around the keyed chain: keying a chain that an
//! earlier version left unkeyed (at start), and logging the chain's head so
//! that witnesses exist outside the store.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::chain::AuditEntry;
use super::writer::{AuditError, Auditor};
use crate::store::{Store, StoreError};

/// Why the chain could not be keyed at start.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// On the first start after migration 4, when the newest record is still
/// unkeyed: authenticates a retention anchor left unkeyed, and appends the
/// record that starts the keyed chain (it MACs the last unkeyed hash, and
/// so binds every unkeyed record). Both trust the store as it is at the
/// upgrade, as the unkeyed chain always did. Only then: once a keyed record
/// exists, an unkeyed anchor is never authenticated (it can only be forged)
/// and `audit verify` refuses it.
pub async fn key_the_chain(
    store: &dyn Store,
    auditor: &Auditor,
    now: i64,
) -> Result<(), UpgradeError> {
    let newest = store.audit_tail(1).await?;
    let Some(last) = newest.last().filter(|r| r.key.is_none()) else {
        return Ok(());
    };
    if let Some(seq) = store.key_legacy_anchor(&auditor.chain().key).await? {
        tracing::info!(
            anchor = seq,
            "audit retention anchor authenticated under the audit key (first start with a keyed chain)"
        );
    }
    let start = AuditEntry {
        at: now,
        action: "audit".to_owned(),
        outcome: "ok".to_owned(),
        detail: Some(format!(
            "the audit chain is keyed from here on (HMAC-SHA-256 under a key derived from the master key); records up to {} are unkeyed SHA-256, bound by this record",
            last.seq
        )),
        ..AuditEntry::default()
    };
    auditor.record(start).await?;
    tracing::info!(unkeyed_up_to = last.seq, "audit chain keyed from here on");
    Ok(())
}

/// Logs the seq and MAC of the newest record: a witness for
/// `jwksd audit verify --head SEQ:MAC`.
pub async fn log_head(store: &dyn Store) {
    match store.audit_tail(1).await {
        Ok(records) => {
            if let Some(r) = records.last() {
                tracing::info!(seq = r.seq, mac = %r.hash, head = %format!("{}:{}", r.seq, r.hash), "audit head");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the audit head"),
    }
}

/// Logs the head every `every` until `stop` is cancelled.
pub async fn log_head_every(store: Arc<dyn Store>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => log_head(store.as_ref()).await,
            () = stop.cancelled() => return,
        }
    }
}
