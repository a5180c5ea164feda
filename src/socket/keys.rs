//! `GET /v1/keys`: the keys of the caller's sets, in the shape of
//! `jwksd keys list --json`.

use axum::Json;
use axum::extract::{ConnectInfo, State};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::audited::refuse_unlisted;
use super::error::ApiError;
use super::peer::Peer;
use super::state::SocketState;
use crate::config::policy::SOFTWARE_BACKEND;
use crate::lifecycle::model::StoredKey;

/// One key as listed: public facts only, times RFC 3339 UTC with `Z`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub set: String,
    pub alg: String,
    pub kid: String,
    pub version: u32,
    pub state: String,
    pub created_at: String,
    pub publish_at: Option<String>,
    pub activate_at: Option<String>,
    pub deactivate_at: Option<String>,
    pub retire_at: Option<String>,
    /// Where the private half was made and kept: the name of a
    /// `[backends.NAME]` table. An addition to DESIGN's list, sent only for
    /// keys held in a token: a software key's object is exactly DESIGN's.
    #[serde(default = "software", skip_serializing_if = "is_software")]
    pub backend: String,
}

fn software() -> String {
    SOFTWARE_BACKEND.to_owned()
}

fn is_software(backend: &str) -> bool {
    backend == SOFTWARE_BACKEND
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The listed form of a stored key.
pub fn key_view(k: &StoredKey) -> KeyView {
    KeyView {
        set: k.set.to_string(),
        alg: k.alg.to_string(),
        kid: k.kid.to_string(),
        version: k.version,
        state: k.state.to_string(),
        created_at: rfc3339(k.created_at),
        publish_at: Some(rfc3339(k.publish_at)),
        activate_at: k.activate_at.map(rfc3339),
        deactivate_at: k.deactivate_at.map(rfc3339),
        retire_at: k.retire_at.map(rfc3339),
        backend: k.backend.clone(),
    }
}

pub(super) async fn list(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    let policies = state.policies.current();
    let grants = peer.grants(&policies);
    if grants.is_empty() {
        return refuse_unlisted(&state, &peer, "keys").await;
    }
    let snapshot = state.keyring.snapshot();
    let keys = snapshot
        .keys
        .iter()
        .filter(|k| grants.iter().any(|(p, _)| p.name == k.set))
        .map(key_view)
        .collect();
    Ok(Json(keys))
}
