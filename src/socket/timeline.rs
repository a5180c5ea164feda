//! `GET /v1/keys/timeline[?set=S]`: the live timeline of the caller's sets
//! as an SVG picture (`jwksd keys timeline --svg FILE`). It shows what
//! `GET /v1/keys` shows, drawn.

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::audited::refuse_unlisted;
use super::error::ApiError;
use super::peer::Peer;
use super::state::SocketState;
use crate::config::policy::Policy;
use crate::timeline::{Timeline, svg};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimelineQuery {
    set: Option<String>,
}

pub(super) async fn draw(
    State(state): State<SocketState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let policies = state.policies.current();
    let grants = peer.grants(&policies);
    if grants.is_empty() {
        return refuse_unlisted(&state, &peer, "keys").await;
    }
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let mut sets: Vec<&Policy> = grants.iter().map(|(p, _)| p.as_ref()).collect();
    sets.sort_by(|a, b| a.name.cmp(&b.name));
    sets.dedup_by(|a, b| a.name == b.name);
    if let Some(wanted) = &query.set {
        // An unknown set and one of another caller's answer alike.
        sets.retain(|p| p.name.as_str() == wanted);
        if sets.is_empty() {
            return Err(ApiError::not_found(format!(
                "set: no key set named {wanted:?} among this caller's sets"
            )));
        }
    }
    let now = state.clock.now();
    let snapshot = state.keyring.snapshot();
    let timeline = Timeline::live(&snapshot.keys, &sets, now);
    let names: Vec<&str> = sets.iter().map(|p| p.name.as_str()).collect();
    let title = format!(
        "jwksd keys: {} at {}",
        names.join(", "),
        now.format("%Y-%m-%d %H:%M:%S UTC")
    );
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        svg::render(&timeline, &title),
    )
        .into_response())
}
