//! Keeps the key backends' tokens connected: a token that is down (absent,
//! logged out, answering errors) is connected and logged in again every
//! tick until it answers, and `jwksd_backend_up` follows. Signing on a
//! token that is down answers 503 meanwhile; the JWKS is served as ever.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ticker::TICK;
use crate::keys::backend::Backends;
use crate::keys::pkcs11::Health;
use crate::metrics::Metrics;

/// Runs until `shutdown`. The first pass connects every token at once, so
/// a misconfigured token is named in the log at start.
pub(super) async fn watch(
    backends: Arc<Backends>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // The last trouble logged per token: a token down for hours is logged
    // when its reason changes, not every tick.
    let mut logged: HashMap<String, Option<String>> = HashMap::new();
    loop {
        for token in backends.tokens() {
            let name = token.name().to_owned();
            if !matches!(token.health(), Health::Up) {
                let connecting = token.clone();
                let _ = tokio::task::spawn_blocking(move || connecting.connect()).await;
            }
            let health = token.health();
            metrics.backend_up(&name, matches!(health, Health::Up));
            let trouble = match health {
                Health::Up => None,
                Health::Down { reason, .. } => Some(reason),
            };
            let last = logged.get(&name).cloned().flatten();
            if trouble != last || !logged.contains_key(&name) {
                match &trouble {
                    None => tracing::info!(backend = %name, "key backend connected and logged in"),
                    Some(reason) => tracing::error!(
                        backend = %name, %reason,
                        "key backend out of reach: signing with its keys answers 503 until it is back (retried every {}s)",
                        TICK.as_secs()
                    ),
                }
                logged.insert(name, trouble);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
