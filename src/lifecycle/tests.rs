//! The pure planner on hand-made keys: every threshold just before, at and
//! just after it (STYLE habit 5).

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};

use super::model::*;
use super::plan::*;
use crate::config::policy::Policy;
use crate::types::{Alg, KeyState, Kid, SetName};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const SEC: TimeDelta = TimeDelta::seconds(1);

/// A one-alg (RS384) policy with `schedule` (`rotate...` lines),
/// publish_ahead 2d, grace 7d.
fn policy(schedule: &str) -> Policy {
    policy_with("[\"RS384\"]", schedule)
}

fn policy_with(algorithms: &str, schedule: &str) -> Policy {
    Policy::from_toml(
        Path::new("x.toml"),
        &format!(
            "name = \"s\"\nalgorithms = {algorithms}\n{schedule}\npublish_ahead = \"2d\"\ngrace = \"7d\"\n"
        ),
    )
    .unwrap()
}

fn every_30d() -> Policy {
    policy("rotate_every = \"30d\"")
}

fn key(version: u32, state: KeyState) -> StoredKey {
    let set = SetName::new("s").unwrap();
    StoredKey {
        kid: Kid::build(&set, Alg::Rs384, version, "abcdefgh"),
        set,
        alg: Alg::Rs384,
        version,
        state,
        public_jwk: "{}".into(),
        sealed_private: state.holds_private().then(|| vec![1, 2, 3]),
        backend: "software".into(),
        backend_ref: None,
        created_at: utc("2026-01-01T00:00:00Z"),
        publish_at: utc("2026-01-01T00:00:00Z"),
        activate_at: None,
        deactivate_at: None,
        retire_at: None,
        emergency: false,
    }
}

fn active(version: u32, since: DateTime<Utc>) -> StoredKey {
    StoredKey {
        publish_at: since,
        created_at: since,
        activate_at: Some(since),
        ..key(version, KeyState::Active)
    }
}

fn pending(version: u32, published: DateTime<Utc>, planned: DateTime<Utc>) -> StoredKey {
    StoredKey {
        publish_at: published,
        created_at: published,
        activate_at: Some(planned),
        ..key(version, KeyState::Pending)
    }
}

fn retiring(version: u32, deactivated: DateTime<Utc>, retire_at: DateTime<Utc>) -> StoredKey {
    StoredKey {
        activate_at: Some(deactivated - TimeDelta::days(30)),
        deactivate_at: Some(deactivated),
        retire_at: Some(retire_at),
        ..key(version, KeyState::Retiring)
    }
}

fn activations(steps: &[Step]) -> Vec<(Kid, DateTime<Utc>, DateTime<Utc>, bool)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Apply(Change::Activate {
                kid,
                at,
                retire_at,
                emergency,
                ..
            }) => Some((kid.clone(), *at, *retire_at, *emergency)),
            _ => None,
        })
        .collect()
}

fn retirements(steps: &[Step]) -> Vec<Kid> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Apply(Change::Retire { kid, .. }) => Some(kid.clone()),
            _ => None,
        })
        .collect()
}

fn generated(steps: &[Step]) -> Vec<(u32, KeyState, DateTime<Utc>, GenerateReason)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Generate(NewKey {
                version,
                state,
                activate_at,
                reason,
                ..
            }) => Some((*version, *state, *activate_at, *reason)),
            _ => None,
        })
        .collect()
}

// ---- bootstrap and lost signers ----

#[test]
fn bootstrap_generates_an_active_v1_key_per_alg_that_signs_at_once() {
    let p = policy_with("[\"RS384\", \"ES384\"]", "rotate_every = \"30d\"");
    let now = utc("2026-01-01T00:00:00Z");
    let steps = plan(&p, &[], now);
    let algs: Vec<Alg> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Generate(NewKey { alg, .. }) => Some(*alg),
            _ => None,
        })
        .collect();
    assert_eq!(algs, vec![Alg::Rs384, Alg::Es384]);
    for g in generated(&steps) {
        assert_eq!(g, (1, KeyState::Active, now, GenerateReason::Bootstrap));
    }
}

#[test]
fn other_sets_keys_do_not_count_as_this_sets_keys() {
    let p = every_30d();
    let mut foreign = active(1, utc("2026-01-01T00:00:00Z"));
    foreign.set = SetName::new("other").unwrap();
    let steps = plan(&p, &[foreign], utc("2026-01-02T00:00:00Z"));
    assert_eq!(
        generated(&steps),
        vec![(
            1,
            KeyState::Active,
            utc("2026-01-02T00:00:00Z"),
            GenerateReason::Bootstrap
        )]
    );
}

#[test]
fn with_every_key_retired_or_revoked_a_new_signer_is_generated_at_the_next_version() {
    let p = every_30d();
    let now = utc("2026-03-01T00:00:00Z");
    let keys = [key(1, KeyState::Retired), key(2, KeyState::Revoked)];
    assert_eq!(
        generated(&plan(&p, &keys, now)),
        vec![(3, KeyState::Active, now, GenerateReason::NoSigner)]
    );
}

#[test]
fn pending_key_without_active_key_activates_at_once_as_emergency() {
    let p = every_30d();
    let now = utc("2026-03-01T00:00:00Z");
    let keys = [
        key(1, KeyState::Revoked),
        pending(2, now - SEC, now + TimeDelta::days(30)),
    ];
    let steps = plan(&p, &keys, now);
    assert_eq!(
        activations(&steps),
        vec![(keys[1].kid.clone(), now, now + TimeDelta::days(7), true)]
    );
    assert!(generated(&steps).is_empty());
}

// ---- rule 1: pre-publication ----

#[test]
fn pending_key_is_published_for_publish_ahead_before_it_signs() {
    // Planned activation earlier than rule 1 allows: publish_at + 2d wins.
    let p = every_30d();
    let published = utc("2026-01-31T00:00:00Z");
    let keys = [
        active(1, utc("2026-01-01T00:00:00Z")),
        pending(2, published, published),
    ];
    let threshold = published + TimeDelta::days(2);
    assert_eq!(earliest_activation(&p, &keys[1]), threshold);
    assert!(activations(&plan(&p, &keys, threshold - SEC)).is_empty());
    for now in [threshold, threshold + SEC] {
        assert_eq!(
            activations(&plan(&p, &keys, now)),
            vec![(keys[1].kid.clone(), now, now + TimeDelta::days(7), false)],
            "at {now}"
        );
    }
}

#[test]
fn pending_key_waits_for_its_planned_activation_after_publish_ahead() {
    let p = every_30d();
    let planned = utc("2026-01-31T00:00:00Z");
    let keys = [
        active(1, utc("2026-01-01T00:00:00Z")),
        pending(2, utc("2026-01-01T00:00:00Z"), planned),
    ];
    assert_eq!(earliest_activation(&p, &keys[1]), planned);
    assert!(activations(&plan(&p, &keys, planned - SEC)).is_empty());
    assert_eq!(activations(&plan(&p, &keys, planned)).len(), 1);
    assert_eq!(activations(&plan(&p, &keys, planned + SEC)).len(), 1);
}

#[test]
fn pending_key_without_planned_time_activates_after_publish_ahead() {
    let p = every_30d();
    let published = utc("2026-01-10T00:00:00Z");
    let k = StoredKey {
        activate_at: None,
        ..pending(2, published, published)
    };
    assert_eq!(earliest_activation(&p, &k), published + TimeDelta::days(2));
}

// ---- rule 3: grace ----

#[test]
fn retiring_key_is_retired_exactly_at_retire_at() {
    let p = every_30d();
    let retire_at = utc("2026-02-07T00:00:00Z");
    let keys = [
        retiring(1, utc("2026-01-31T00:00:00Z"), retire_at),
        active(2, utc("2026-01-31T00:00:00Z")),
        pending(3, utc("2026-01-31T00:00:00Z"), utc("2026-03-02T00:00:00Z")),
    ];
    assert!(retirements(&plan(&p, &keys, retire_at - SEC)).is_empty());
    assert_eq!(
        retirements(&plan(&p, &keys, retire_at)),
        vec![keys[0].kid.clone()]
    );
    assert_eq!(
        retirements(&plan(&p, &keys, retire_at + SEC)),
        vec![keys[0].kid.clone()]
    );
    assert_eq!(next_due(&p, &keys), Some(retire_at));
}

#[test]
fn the_key_that_stops_signing_stays_published_for_grace() {
    let p = every_30d();
    let now = utc("2026-01-31T00:00:00Z");
    let keys = [
        active(1, utc("2026-01-01T00:00:00Z")),
        pending(2, utc("2026-01-01T00:00:00Z"), now),
    ];
    let acts = activations(&plan(&p, &keys, now));
    assert_eq!(
        acts,
        vec![(keys[1].kid.clone(), now, now + TimeDelta::days(7), false)]
    );
}

// ---- rules 4 and 7: successor and schedule ----

#[test]
fn active_key_without_successor_gets_a_pending_one_at_the_next_version() {
    let p = every_30d();
    let since = utc("2026-01-01T00:00:00Z");
    let keys = [key(1, KeyState::Retired), active(2, since)];
    let steps = plan(&p, &keys, since);
    assert_eq!(
        generated(&steps),
        vec![(
            3,
            KeyState::Pending,
            since + TimeDelta::days(30),
            GenerateReason::Successor
        )]
    );
}

#[test]
fn rotate_every_successor_is_pushed_back_to_respect_publish_ahead() {
    // Active since S, period 30d: the successor signs at S + 30d unless it is
    // generated later than S + 28d, when publish_ahead pushes it back.
    let p = every_30d();
    let since = utc("2026-01-01T00:00:00Z");
    let due = since + TimeDelta::days(30);
    let edge = due - TimeDelta::days(2);
    let keys = [active(1, since)];
    let planned = |now| generated(&plan(&p, &keys, now))[0].2;
    assert_eq!(planned(edge - SEC), due);
    assert_eq!(planned(edge), due);
    assert_eq!(planned(edge + SEC), due + SEC);
    assert_eq!(successor_activation(&p, since, edge + SEC), due + SEC);
}

#[test]
fn cron_successor_takes_the_first_schedule_point_after_publish_ahead() {
    // 03:00 UTC on the 1st of each month, publish_ahead 2d.
    let p = policy("rotate = \"0 0 3 1 * *\"");
    let since = utc("2026-01-01T03:00:00Z");
    let keys = [active(1, since)];
    let planned = |now| generated(&plan(&p, &keys, now))[0].2;
    assert_eq!(planned(since), utc("2026-02-01T03:00:00Z"));
    // Generated 2d before a point: just makes it.
    let edge = utc("2026-01-30T03:00:00Z");
    assert_eq!(planned(edge - SEC), utc("2026-02-01T03:00:00Z"));
    assert_eq!(planned(edge), utc("2026-02-01T03:00:00Z"));
    // One second later it would be published for less than 2d: next month.
    assert_eq!(planned(edge + SEC), utc("2026-03-01T03:00:00Z"));
}

#[test]
fn cron_successor_honours_the_timezone() {
    // 03:00 in New York on the 1st: 08:00 UTC in winter, 07:00 UTC in summer.
    let p = policy("rotate = \"0 0 3 1 * *\"\ntimezone = \"America/New_York\"");
    assert_eq!(
        successor_activation(&p, utc("2026-01-01T08:00:00Z"), utc("2026-01-01T08:00:00Z")),
        utc("2026-02-01T08:00:00Z")
    );
    assert_eq!(
        successor_activation(&p, utc("2026-06-01T07:00:00Z"), utc("2026-06-01T07:00:00Z")),
        utc("2026-07-01T07:00:00Z")
    );
}

#[test]
fn active_key_with_a_pending_successor_needs_nothing_before_it_is_due() {
    let p = every_30d();
    let since = utc("2026-01-01T00:00:00Z");
    let keys = [
        active(1, since),
        pending(2, since, since + TimeDelta::days(30)),
    ];
    assert!(plan(&p, &keys, since + TimeDelta::days(1)).is_empty());
    assert_eq!(next_due(&p, &keys), Some(since + TimeDelta::days(30)));
}

#[test]
fn next_due_is_the_earliest_of_activation_and_retirement() {
    let p = every_30d();
    let since = utc("2026-01-31T00:00:00Z");
    let keys = [
        retiring(1, since, since + TimeDelta::days(7)),
        active(2, since),
        pending(3, since, since + TimeDelta::days(5)),
    ];
    assert_eq!(next_due(&p, &keys), Some(since + TimeDelta::days(5)));
    assert_eq!(next_due(&p, &keys[..2]), Some(since + TimeDelta::days(7)));
    assert_eq!(next_due(&p, &keys[1..2]), None);
}

// ---- reschedule after a policy reload ----

#[test]
fn reschedule_moves_the_pending_key_to_the_new_schedule() {
    let since = utc("2026-01-01T00:00:00Z");
    let keys = [
        active(1, since),
        pending(2, since, since + TimeDelta::days(30)),
    ];
    assert!(reschedule(&every_30d(), &keys).is_empty());
    let shorter = policy("rotate_every = \"10d\"");
    assert_eq!(
        reschedule(&shorter, &keys),
        vec![Change::Reschedule {
            kid: keys[1].kid.clone(),
            activate_at: since + TimeDelta::days(10)
        }]
    );
    let cron = policy("rotate = \"0 0 3 * * 1\""); // Mondays 03:00 UTC
    // 2026-01-01 is a Thursday; publish_ahead 2d: the first Monday after
    // 2026-01-03T00:00Z is 2026-01-05.
    assert_eq!(
        reschedule(&cron, &keys),
        vec![Change::Reschedule {
            kid: keys[1].kid.clone(),
            activate_at: utc("2026-01-05T03:00:00Z")
        }]
    );
}

#[test]
fn reschedule_never_moves_a_key_earlier_than_publish_ahead_allows() {
    let since = utc("2026-01-01T00:00:00Z");
    let published = since + TimeDelta::days(1);
    let keys = [
        active(1, since),
        pending(2, published, since + TimeDelta::days(30)),
    ];
    let hourly = policy("rotate_every = \"1h\"");
    let changes = reschedule(&hourly, &keys);
    assert_eq!(
        changes,
        vec![Change::Reschedule {
            kid: keys[1].kid.clone(),
            activate_at: published + TimeDelta::days(2)
        }]
    );
}

// ---- operator actions (rule 8) and the row of a generated key ----

#[test]
fn rotation_without_now_moves_the_pending_key_to_when_rule_1_allows() {
    let p = every_30d();
    let published = utc("2026-01-10T00:00:00Z");
    let allowed = published + TimeDelta::days(2);
    let keys = [
        active(1, utc("2026-01-01T00:00:00Z")),
        pending(2, published, utc("2026-01-31T00:00:00Z")),
    ];
    let moved_to = |now| match rotation(&p, &keys, Alg::Rs384, false, now).unwrap() {
        Change::Reschedule { kid, activate_at } => {
            assert_eq!(kid, keys[1].kid);
            activate_at
        }
        other => panic!("{other:?}"),
    };
    // Just before, at and just after the key has been published for
    // publish_ahead: never earlier than that, never earlier than now.
    assert_eq!(moved_to(allowed - SEC), allowed);
    assert_eq!(moved_to(allowed), allowed);
    assert_eq!(moved_to(allowed + SEC), allowed + SEC);
}

#[test]
fn rotation_now_activates_the_pending_key_at_once_and_starts_the_grace() {
    let p = every_30d();
    let now = utc("2026-01-10T12:00:00Z");
    let keys = [
        active(1, utc("2026-01-01T00:00:00Z")),
        pending(2, now - SEC, utc("2026-01-31T00:00:00Z")),
    ];
    assert_eq!(
        rotation(&p, &keys, Alg::Rs384, true, now),
        Ok(Change::Activate {
            set: p.name.clone(),
            alg: Alg::Rs384,
            kid: keys[1].kid.clone(),
            at: now,
            retire_at: now + TimeDelta::days(7),
            emergency: true,
        })
    );
}

#[test]
fn rotation_without_a_pending_key_is_refused() {
    let p = every_30d();
    let keys = [active(1, utc("2026-01-01T00:00:00Z"))];
    let refused = rotation(&p, &keys, Alg::Rs384, true, utc("2026-01-02T00:00:00Z")).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "s/RS384 has no pending key to rotate to"
    );
}

#[test]
fn revocation_takes_a_published_key_out_at_once_and_refuses_the_rest() {
    let now = utc("2026-02-01T00:00:00Z");
    let keys = [
        key(1, KeyState::Retired),
        active(2, utc("2026-01-01T00:00:00Z")),
    ];
    assert_eq!(
        revocation(&keys, keys[1].kid.as_str(), now),
        Ok(Change::Revoke {
            kid: keys[1].kid.clone(),
            at: now,
        })
    );
    assert_eq!(
        revocation(&keys, keys[0].kid.as_str(), now),
        Err(Refusal::NotPublished {
            kid: keys[0].kid.clone(),
            state: KeyState::Retired,
        })
    );
    assert_eq!(
        revocation(&keys, "s-rs384-v9-nothere", now),
        Err(Refusal::UnknownKid("s-rs384-v9-nothere".into()))
    );
}

#[test]
fn a_generated_successor_counts_rule_1_from_its_publication_not_from_the_plan() {
    let p = every_30d();
    let since = utc("2026-01-01T00:00:00Z");
    let planned_at = utc("2026-01-29T00:00:00Z");
    let steps = plan(&p, &[active(1, since)], planned_at);
    let [Step::Generate(new)] = steps.as_slice() else {
        panic!("{steps:?}");
    };
    // Planned at the 29th: 30 days after activation would be the 31st, but
    // rule 1 needs two days of publication: the 31st is just reachable.
    assert_eq!(new.activate_at, utc("2026-01-31T00:00:00Z"));
    let row = || GeneratedRow {
        kid: Kid::build(&p.name, Alg::Rs384, 2, "abcdefgh"),
        public_jwk: "{}".into(),
        sealed_private: Some(vec![1]),
        backend: "software".into(),
        backend_ref: None,
    };
    // Published the same second: the plan stands.
    let k = new_key(&p, new, row(), planned_at);
    assert_eq!(k.activate_at, Some(utc("2026-01-31T00:00:00Z")));
    assert_eq!(
        (k.publish_at, k.state, k.version),
        (planned_at, KeyState::Pending, 2)
    );
    // Published a second later (generation took time): rule 1 moves it too.
    let late = planned_at + SEC;
    let k = new_key(&p, new, row(), late);
    assert_eq!(k.activate_at, Some(late + TimeDelta::days(2)));
}

#[test]
fn a_generated_first_key_signs_from_its_publication() {
    let p = every_30d();
    let now = utc("2026-01-01T00:00:00Z");
    let steps = plan(&p, &[], now);
    let [Step::Generate(new)] = steps.as_slice() else {
        panic!("{steps:?}");
    };
    let published = now + TimeDelta::seconds(3);
    let k = new_key(
        &p,
        new,
        GeneratedRow {
            kid: Kid::build(&p.name, Alg::Rs384, 1, "abcdefgh"),
            public_jwk: "{}".into(),
            sealed_private: Some(vec![1]),
            backend: "software".into(),
            backend_ref: None,
        },
        published,
    );
    assert_eq!(k.state, KeyState::Active);
    assert_eq!(k.activate_at, Some(published));
    assert_eq!(k.publish_at, published);
}
