//! The key lifecycle as spans on a time axis: for each kid, when it was (or
//! will be) pending, active and retiring, read from the timestamps stored
//! with the keys (DESIGN rule 6); what has not happened yet is planned from
//! the stored plan and the policy's schedule. Pure: `now` comes in as data.

use chrono::{DateTime, Utc};

use crate::config::policy::{Policy, Schedule};
use crate::lifecycle::model::StoredKey;
use crate::lifecycle::plan;
use crate::types::{Alg, KeyState, Kid, SetName};

/// The states drawn: the three in which a key is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Published, not signing.
    Pending,
    /// Published and signing.
    Active,
    /// Published, private half destroyed.
    Retiring,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Active => "active",
            Phase::Retiring => "retiring",
        }
    }
}

/// One kid in one phase over `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub kid: Kid,
    pub phase: Phase,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// After `now`: what the plan and schedule say will happen.
    pub planned: bool,
}

/// An instant worth a mark on the axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkKind {
    /// A point of the policy's schedule (a cron point, or a `rotate_every`
    /// activation).
    Schedule,
    /// A key that signed at once, skipping pre-publication (`rotate --now`,
    /// or the hand-over after revoking the signer).
    Emergency,
    /// A key revoked.
    Revoked,
}

impl MarkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkKind::Schedule => "schedule",
            MarkKind::Emergency => "emergency",
            MarkKind::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub at: DateTime<Utc>,
    pub kind: MarkKind,
    /// The key concerned (none for a schedule point).
    pub kid: Option<Kid>,
}

/// The rows of one (set, alg), oldest kid first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub set: SetName,
    pub alg: Alg,
    pub kids: Vec<Kid>,
    pub bars: Vec<Bar>,
    pub marks: Vec<Mark>,
}

/// What a picture shows: the groups over `[start, end]`, and `now` for a
/// live picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub now: Option<DateTime<Utc>>,
    pub groups: Vec<Group>,
}

/// Schedule points drawn at most per group: a seconds-level cron over a
/// year would otherwise draw millions of lines.
const MAX_SCHEDULE_MARKS: usize = 400;

impl Timeline {
    /// The timeline of `keys` under `policies` over `[start, end]`. With
    /// `now`, what lies after it is marked planned; without, the keys'
    /// stored times are the whole story (a simulation that ends at `end`).
    pub fn build(
        keys: &[StoredKey],
        policies: &[&Policy],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        now: Option<DateTime<Utc>>,
    ) -> Timeline {
        let mut groups = Vec::new();
        for policy in policies {
            for &alg in &policy.algorithms {
                let mut mine: Vec<&StoredKey> = keys
                    .iter()
                    .filter(|k| k.set == policy.name && k.alg == alg)
                    .collect();
                mine.sort_by_key(|k| k.version);
                groups.push(group(policy, alg, &mine, start, end, now));
            }
        }
        Timeline {
            start,
            end,
            now,
            groups,
        }
    }

    /// The live picture of `policies`' keys at `now`, over
    /// [`Timeline::live_window`].
    pub fn live(keys: &[StoredKey], policies: &[&Policy], now: DateTime<Utc>) -> Timeline {
        let (start, end) = Timeline::live_window(keys, policies, now);
        Timeline::build(keys, policies, start, end, Some(now))
    }

    /// The window a live picture shows: from the publication of the oldest
    /// key still published to the end of what is planned for the keys
    /// published now, with a margin, and `now` inside.
    pub fn live_window(
        keys: &[StoredKey],
        policies: &[&Policy],
        now: DateTime<Utc>,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        let probe = Timeline::build(
            keys,
            policies,
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            Some(now),
        );
        let bars = || probe.groups.iter().flat_map(|g| &g.bars);
        let live_kids: Vec<&Kid> = bars().filter(|b| b.to > now).map(|b| &b.kid).collect();
        let live: Vec<&Bar> = bars()
            .filter(|b| live_kids.contains(&&b.kid) && b.to < DateTime::<Utc>::MAX_UTC)
            .collect();
        let from = live.iter().map(|b| b.from).min().unwrap_or(now).min(now);
        let to = live.iter().map(|b| b.to).max().unwrap_or(now).max(now);
        let span = (to - from).max(chrono::Duration::hours(1));
        let margin = span / 20;
        (from - margin, to + margin)
    }
}

/// The bars and marks of one (set, alg).
fn group(
    policy: &Policy,
    alg: Alg,
    keys: &[&StoredKey],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: Option<DateTime<Utc>>,
) -> Group {
    let mut bars = Vec::new();
    let mut marks = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let successor = keys[i + 1..].iter().find(|k| k.state == KeyState::Pending);
        for (phase, from, to) in phases(policy, key, successor.copied()) {
            push_bar(&mut bars, key, phase, from, to, start, end, now);
        }
        let was_active = key.state == KeyState::Active || key.deactivate_at.is_some();
        if let Some(at) = key.activate_at.filter(|_| was_active) {
            if key.emergency {
                marks.push(mark(at, MarkKind::Emergency, Some(&key.kid)));
            } else if matches!(policy.schedule, Schedule::Every(_)) && key.version > 1 {
                marks.push(mark(at, MarkKind::Schedule, None));
            }
        }
        if key.state == KeyState::Revoked
            && let Some(at) = key.retire_at
        {
            marks.push(mark(at, MarkKind::Revoked, Some(&key.kid)));
        }
    }
    if let Schedule::Cron { .. } = policy.schedule {
        marks.extend(
            cron_points(&policy.schedule, start, end).map(|at| mark(at, MarkKind::Schedule, None)),
        );
    }
    marks.retain(|m| m.at >= start && m.at <= end);
    marks.sort_by_key(|m| (m.at, m.kind));
    let kids = keys
        .iter()
        .filter(|k| bars.iter().any(|b: &Bar| b.kid == k.kid))
        .map(|k| k.kid.clone())
        .collect();
    Group {
        set: policy.name.clone(),
        alg,
        kids,
        bars,
        marks,
    }
}

fn mark(at: DateTime<Utc>, kind: MarkKind, kid: Option<&Kid>) -> Mark {
    Mark {
        at,
        kind,
        kid: kid.cloned(),
    }
}

/// A key's phases as `(phase, from, to)`, past and planned. `successor` is
/// the pending key that will replace it, if there is one.
fn phases(
    policy: &Policy,
    key: &StoredKey,
    successor: Option<&StoredKey>,
) -> Vec<(Phase, DateTime<Utc>, DateTime<Utc>)> {
    let grace = policy.grace.to_chrono();
    let mut out = Vec::new();
    match key.state {
        KeyState::Pending => {
            let activates = plan::earliest_activation(policy, key);
            out.push((Phase::Pending, key.publish_at, activates));
            // Planned: it signs until its own successor (generated when it
            // activates) takes over, then retires for `grace`.
            let hands_over = plan::successor_activation(policy, activates, activates);
            out.push((Phase::Active, activates, hands_over));
            out.push((Phase::Retiring, hands_over, hands_over + grace));
        }
        KeyState::Active => {
            let since = key.activate_at.unwrap_or(key.publish_at);
            out.push((Phase::Pending, key.publish_at, since));
            let until = successor.map_or(DateTime::<Utc>::MAX_UTC, |s| {
                plan::earliest_activation(policy, s)
            });
            out.push((Phase::Active, since, until));
            if until < DateTime::<Utc>::MAX_UTC {
                out.push((Phase::Retiring, until, until + grace));
            }
        }
        KeyState::Retiring | KeyState::Retired | KeyState::Revoked => {
            match (key.activate_at, key.deactivate_at) {
                (Some(on), Some(off)) => {
                    out.push((Phase::Pending, key.publish_at, on));
                    out.push((Phase::Active, on, off));
                    if let Some(gone) = key.retire_at {
                        out.push((Phase::Retiring, off, gone));
                    }
                }
                // Revoked before it ever signed.
                _ => {
                    if let Some(gone) = key.retire_at {
                        out.push((Phase::Pending, key.publish_at, gone));
                    }
                }
            }
        }
    }
    out
}

/// Adds the part of `[from, to)` inside the window, split at `now` into
/// what happened and what is planned. Empty spans are left out.
#[allow(clippy::too_many_arguments)]
fn push_bar(
    bars: &mut Vec<Bar>,
    key: &StoredKey,
    phase: Phase,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: Option<DateTime<Utc>>,
) {
    let (from, to) = (from.max(start), to.min(end));
    let split = now.map_or(to, |n| n.clamp(from, to));
    for (from, to, planned) in [(from, split, false), (split, to, true)] {
        if from < to {
            bars.push(Bar {
                kid: key.kid.clone(),
                phase,
                from,
                to,
                planned,
            });
        }
    }
}

/// The cron points in `[start, end]`, at most [`MAX_SCHEDULE_MARKS`].
fn cron_points(
    schedule: &Schedule,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    let mut at = start;
    std::iter::from_fn(move || {
        let next = schedule.next_activation(at, at);
        if next > end || next < at {
            return None;
        }
        at = next + chrono::Duration::seconds(1);
        Some(next)
    })
    .take(MAX_SCHEDULE_MARKS)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::TimeZone;

    use super::*;
    use crate::types::Kid;

    fn t(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy::from_toml(
            Path::new("p.toml"),
            "name = \"p\"\nalgorithms = [\"ES384\"]\nrotate_every = \"10d\"\npublish_ahead = \"2d\"\ngrace = \"3d\"\n",
        )
        .unwrap()
    }

    fn key(version: u32, state: KeyState, times: [Option<DateTime<Utc>>; 4]) -> StoredKey {
        let set = SetName::new("p").unwrap();
        StoredKey {
            kid: Kid::build(&set, Alg::Es384, version, "abcdefgh"),
            set,
            alg: Alg::Es384,
            version,
            state,
            public_jwk: String::new(),
            sealed_private: None,
            backend: "software".into(),
            backend_ref: None,
            created_at: times[0].unwrap(),
            publish_at: times[0].unwrap(),
            activate_at: times[1],
            deactivate_at: times[2],
            retire_at: times[3],
            emergency: false,
        }
    }

    #[test]
    fn live_keys_show_their_past_and_their_plan_split_at_now() {
        let p = policy();
        let keys = [
            key(
                1,
                KeyState::Retiring,
                [Some(t(1, 0)), Some(t(1, 0)), Some(t(11, 0)), Some(t(14, 0))],
            ),
            key(
                2,
                KeyState::Active,
                [Some(t(1, 0)), Some(t(11, 0)), None, None],
            ),
            key(
                3,
                KeyState::Pending,
                [Some(t(11, 0)), Some(t(21, 0)), None, None],
            ),
        ];
        let tl = Timeline::build(&keys, &[&p], t(1, 0), t(31, 0), Some(t(12, 0)));
        let g = &tl.groups[0];
        type Row = (u32, Phase, DateTime<Utc>, DateTime<Utc>, bool);
        let bars: Vec<Row> = g
            .bars
            .iter()
            .map(|b| {
                let v = keys.iter().find(|k| k.kid == b.kid).unwrap().version;
                (v, b.phase, b.from, b.to, b.planned)
            })
            .collect();
        assert_eq!(
            bars,
            [
                (1, Phase::Active, t(1, 0), t(11, 0), false),
                (1, Phase::Retiring, t(11, 0), t(12, 0), false),
                (1, Phase::Retiring, t(12, 0), t(14, 0), true),
                (2, Phase::Pending, t(1, 0), t(11, 0), false),
                (2, Phase::Active, t(11, 0), t(12, 0), false),
                (2, Phase::Active, t(12, 0), t(21, 0), true),
                (2, Phase::Retiring, t(21, 0), t(24, 0), true),
                (3, Phase::Pending, t(11, 0), t(12, 0), false),
                (3, Phase::Pending, t(12, 0), t(21, 0), true),
                (3, Phase::Active, t(21, 0), t(31, 0), true),
            ]
        );
        // rotate_every: the activation of v2 is a schedule point.
        assert_eq!(g.marks, [mark(t(11, 0), MarkKind::Schedule, None)]);
        let (from, to) = Timeline::live_window(&keys, &[&p], t(12, 0));
        assert!(from <= t(1, 0) && to >= t(31, 0), "{from} {to}");
    }

    #[test]
    fn a_key_revoked_before_it_signed_is_a_pending_span_and_a_mark() {
        let p = policy();
        let keys = [key(
            2,
            KeyState::Revoked,
            [Some(t(1, 0)), Some(t(11, 0)), None, Some(t(5, 0))],
        )];
        let tl = Timeline::build(&keys, &[&p], t(1, 0), t(31, 0), None);
        let g = &tl.groups[0];
        assert_eq!(g.bars.len(), 1);
        assert_eq!((g.bars[0].phase, g.bars[0].to), (Phase::Pending, t(5, 0)));
        assert_eq!(g.marks[0].kind, MarkKind::Revoked);
    }
}
