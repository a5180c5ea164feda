//! SIGHUP: re-reading the policies. A bad policy is refused and the old one
//! kept; a good one replaces it and pending keys move to the new schedule.

use std::path::Path;

use crate::audit::chain::entry;
use crate::config::policy::Policies;
use crate::state::Shared;

/// Reloads the policies from `dir` into `shared.policies`, audited either way.
pub(super) async fn reload_policies(shared: &Shared, dir: &Path) {
    let mut record = entry(shared.clock.now(), "reload", "ok");
    let loaded = Policies::load_dir(dir).and_then(|new| {
        new.check_backends(&shared.backends.names())?;
        Ok(new)
    });
    match loaded {
        Err(e) => {
            tracing::error!(error = %e, "policy reload refused; keeping the policies in force");
            record.outcome = "refused".into();
            record.detail = Some(e.to_string());
        }
        Ok(new) => {
            for warning in new.warnings() {
                tracing::warn!("{warning}");
            }
            shared.policies.replace(new);
            tracing::info!(dir = %dir.display(), "policies reloaded");
            if let Err(e) = shared.lifecycle.reschedule().await {
                tracing::error!(error = %e, "rescheduling after reload failed; next tick retries");
            }
            if let Err(e) = shared.keyring.refresh().await {
                tracing::error!(error = %e, "could not refresh served keys after reload");
            }
        }
    }
    if let Err(e) = shared.auditor.record(record).await {
        tracing::error!(error = %e, "reload not audited");
    }
}
