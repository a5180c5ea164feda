//! The key lifecycle end to end on `Simulation` (the real scheduler and an
//! in-memory SQLite store on a manual clock), checked against DESIGN §1's
//! timing rules, plus the `jwksd simulate` output format.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, LocalResult, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use jwksd::clock::Clock;
use jwksd::config::policy::Policy;
use jwksd::lifecycle::model::{Event, EventKind, StoredKey};
use jwksd::lifecycle::simulate::Simulation;
use jwksd::types::{Alg, KeyState};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Random policies
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum CronDay {
    Daily,
    /// Day of week, 0 = Sunday.
    Weekly(u32),
    /// Day of month, 1..=28.
    Monthly(u32),
}

#[derive(Debug, Clone)]
enum Sched {
    Every(u64),
    Cron {
        minute: u32,
        hour: u32,
        day: CronDay,
        tz: Option<&'static str>,
    },
}

impl Sched {
    /// The longest gap between two schedule points (plus an hour for DST).
    fn period(&self) -> i64 {
        match self {
            Sched::Every(s) => *s as i64,
            Sched::Cron { day, .. } => {
                3600 + 86_400
                    * match day {
                        CronDay::Daily => 1,
                        CronDay::Weekly(_) => 7,
                        CronDay::Monthly(_) => 31,
                    }
            }
        }
    }

    fn toml(&self) -> String {
        match self {
            Sched::Every(s) => format!("rotate_every = \"{s}s\"\n"),
            Sched::Cron {
                minute,
                hour,
                day,
                tz,
            } => {
                let (dom, dow) = match day {
                    CronDay::Daily => ("*".to_owned(), "*".to_owned()),
                    CronDay::Weekly(d) => ("*".to_owned(), d.to_string()),
                    CronDay::Monthly(d) => (d.to_string(), "*".to_owned()),
                };
                let mut s = format!("rotate = \"0 {minute} {hour} {dom} * {dow}\"\n");
                if let Some(tz) = tz {
                    s += &format!("timezone = \"{tz}\"\n");
                }
                s
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    sched: Sched,
    algorithms: Vec<Alg>,
    max_age: u64,
    publish_ahead: u64,
    lifetime: u64,
    skew: u64,
    grace: u64,
    /// Seconds after 2026-01-01T00:00:00Z.
    start_offset: i64,
    /// (seconds after start, seconds down): the daemon is down, no tick runs.
    downtimes: Vec<(i64, i64)>,
}

impl Case {
    fn toml(&self) -> String {
        let algs: Vec<String> = self.algorithms.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "name = \"prop\"\nalgorithms = [{}]\n{}publish_ahead = \"{}s\"\ngrace = \"{}s\"\n\
             jwks_max_age = \"{}s\"\nassertion_lifetime = \"{}s\"\nclock_skew = \"{}s\"\n",
            algs.join(", "),
            self.sched.toml(),
            self.publish_ahead,
            self.grace,
            self.max_age,
            self.lifetime,
            self.skew
        )
    }

    /// Roughly how many keys two years make: debug builds re-read every key
    /// on each tick, so the cost grows with the square of this.
    fn rotations(&self) -> i64 {
        let interval = self.sched.period().max(self.publish_ahead as i64);
        SIM_DAYS * 86_400 / interval * self.algorithms.len() as i64
    }
}

/// Simulated span of every proptest case.
const SIM_DAYS: i64 = 731;
/// Upper bound on `Case::rotations` (keeps the test within its time budget).
const MAX_ROTATIONS: i64 = 160;

fn log_uniform(lo: u64, hi: u64) -> impl Strategy<Value = u64> {
    (0.0f64..=1.0).prop_map(move |x| {
        let v = (lo as f64) * ((hi as f64) / (lo as f64)).powf(x);
        (v.round() as u64).clamp(lo, hi)
    })
}

fn sched_every() -> impl Strategy<Value = Sched> {
    log_uniform(3600, 60 * 86_400).prop_map(Sched::Every)
}

fn sched_cron() -> impl Strategy<Value = Sched> {
    let day = prop_oneof![
        Just(CronDay::Daily),
        (0u32..7).prop_map(CronDay::Weekly),
        (1u32..=28).prop_map(CronDay::Monthly),
    ];
    let tz = prop_oneof![
        Just(None),
        Just(Some("America/New_York")),
        Just(Some("Europe/Berlin")),
    ];
    // Hours 1..=3 are where DST gaps and repeats are: weigh them.
    let hour = prop_oneof![0u32..24, 1u32..=3];
    let minute = prop_oneof![Just(0u32), Just(30u32), 0u32..60];
    (minute, hour, day, tz).prop_map(|(minute, hour, day, tz)| Sched::Cron {
        minute,
        hour,
        day,
        tz,
    })
}

fn case(sched: impl Strategy<Value = Sched>) -> impl Strategy<Value = Case> {
    let algs = prop_oneof![
        Just(vec![Alg::Rs384]),
        Just(vec![Alg::Es384]),
        Just(vec![Alg::Rs384, Alg::Es384]),
        Just(vec![Alg::Es384, Alg::Rs384]),
    ];
    let timing = (
        log_uniform(60, 86_400),     // jwks_max_age
        log_uniform(1, 10 * 86_400), // publish_ahead extra
        1u64..=300,                  // assertion_lifetime
        1u64..=600,                  // clock_skew
        log_uniform(1, 14 * 86_400), // grace extra
    );
    let downtimes = prop::collection::vec(
        (
            0i64..SIM_DAYS * 86_400,
            prop_oneof![1i64..120, 60i64..86_400, 86_400i64..40 * 86_400],
        ),
        0..5,
    );
    (sched, algs, timing, 0i64..365 * 86_400, downtimes)
        .prop_map(
            |(sched, algorithms, (max_age, extra, lifetime, skew, grace_extra), start, mut dt)| {
                dt.sort();
                Case {
                    sched,
                    algorithms,
                    max_age,
                    publish_ahead: max_age + extra - 1,
                    lifetime,
                    skew,
                    grace: lifetime + max_age + skew + grace_extra - 1,
                    start_offset: start,
                    downtimes: dt,
                }
            },
        )
        .prop_filter("too many rotations for the time budget", |c| {
            c.rotations() <= MAX_ROTATIONS
        })
}

// ---------------------------------------------------------------------------
// The rules, checked after every tick
// ---------------------------------------------------------------------------

fn rank(s: KeyState) -> u8 {
    match s {
        KeyState::Pending => 0,
        KeyState::Active => 1,
        KeyState::Retiring => 2,
        KeyState::Retired => 3,
        KeyState::Revoked => 4,
    }
}

/// RFC 7638 thumbprint of a public JWK as stored, computed independently.
fn jwk_thumbprint(jwk: &serde_json::Value) -> String {
    let s = |k: &str| jwk[k].as_str().unwrap().to_owned();
    let canonical = match jwk["kty"].as_str().unwrap() {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        other => panic!("unexpected kty {other}"),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Rule 5: `<set>-<alg>-v<N>-<first 8 chars of the thumbprint>`.
fn check_kid(k: &StoredKey) {
    let jwk: serde_json::Value = serde_json::from_str(&k.public_jwk).unwrap();
    let alg_part = match k.alg {
        Alg::Rs384 => "rs384",
        Alg::Es384 => "es384",
    };
    let tp = jwk_thumbprint(&jwk);
    assert_eq!(
        k.kid.as_str(),
        format!("{}-{alg_part}-v{}-{}", k.set, k.version, &tp[..8]),
        "kid format"
    );
    assert_eq!(jwk["kid"].as_str(), Some(k.kid.as_str()), "JWK kid");
    assert_eq!(jwk["alg"].as_str(), Some(k.alg.as_str()), "JWK alg");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            jwk.get(private).is_none(),
            "{}: private member {private}",
            k.kid
        );
    }
}

/// A schedule point of `sched` (cron): the wall-clock time in its zone, or,
/// when that wall-clock time does not exist that day, an instant in the gap's
/// day; when it exists twice, the earlier.
fn check_cron_point(sched: &Sched, t: DateTime<Utc>) {
    let Sched::Cron {
        minute,
        hour,
        day,
        tz,
    } = sched
    else {
        return;
    };
    let tz: Tz = tz.unwrap_or("UTC").parse().unwrap();
    let local = t.with_timezone(&tz);
    let date = local.date_naive();
    match day {
        CronDay::Daily => {}
        CronDay::Weekly(d) => assert_eq!(local.weekday().num_days_from_sunday(), *d, "{t}"),
        CronDay::Monthly(d) => assert_eq!(local.day(), *d, "{t}"),
    }
    match tz.from_local_datetime(&date.and_hms_opt(*hour, *minute, 0).unwrap()) {
        LocalResult::Single(p) => assert_eq!(p.with_timezone(&Utc), t, "cron point {t}"),
        LocalResult::Ambiguous(a, _) => {
            assert_eq!(
                a.with_timezone(&Utc),
                t,
                "repeated wall time runs once, early"
            )
        }
        LocalResult::None => {
            // Spring forward: right after the gap, on the same day.
            assert!(
                (local.hour(), local.minute()) > (*hour, *minute)
                    && local.hour() <= *hour + 1
                    && local.second() == 0,
                "{t} ({local}) for a missing {hour}:{minute}"
            );
        }
    }
}

/// Everything the checker remembers between ticks.
struct Checker {
    case: Case,
    policy: Policy,
    /// Last seen state per kid (rule: states only move forward).
    states: HashMap<String, KeyState>,
    bootstrapped: HashSet<Alg>,
    activations: usize,
    events: usize,
}

impl Checker {
    fn new(case: Case, policy: Policy) -> Self {
        Checker {
            case,
            policy,
            states: HashMap::new(),
            bootstrapped: HashSet::new(),
            activations: 0,
            events: 0,
        }
    }

    fn pa(&self) -> TimeDelta {
        self.policy.publish_ahead.to_chrono()
    }

    fn grace(&self) -> TimeDelta {
        self.policy.grace.to_chrono()
    }

    /// `late`: the clock just jumped over a downtime, so due transitions may
    /// run later than planned (never earlier).
    fn tick(
        &mut self,
        now: DateTime<Utc>,
        late: bool,
        before: &[StoredKey],
        events: &[Event],
        after: &[StoredKey],
    ) {
        let find =
            |keys: &[StoredKey], kid: &str| keys.iter().find(|k| k.kid.as_str() == kid).cloned();
        let mut activated_now: HashSet<Alg> = HashSet::new();
        let mut generated_now: HashSet<String> = HashSet::new();
        self.events += events.len();
        for e in events {
            assert_eq!(e.at, now, "event time is the tick's time");
            let kid = e.kid.as_str();
            let k = find(&e.after, kid).expect("event's key in its snapshot");
            let old = find(before, kid);
            match e.kind {
                EventKind::Generated => {
                    assert!(old.is_none(), "{kid} generated twice");
                    generated_now.insert(kid.to_owned());
                    assert_eq!(k.publish_at, now, "{kid}: published when generated");
                    if k.state == KeyState::Pending {
                        // Rule 4 and 7: generated right after its predecessor activated,
                        // and planned at the first schedule point after publish_ahead.
                        let active = e
                            .after
                            .iter()
                            .find(|a| a.alg == e.alg && a.state == KeyState::Active)
                            .expect("successor of an active key");
                        assert_eq!(k.version, active.version + 1);
                        let planned = k.activate_at.unwrap();
                        assert!(
                            planned >= now + self.pa(),
                            "{kid}: planned {planned} < publish_ahead"
                        );
                        match &self.case.sched {
                            Sched::Every(s) => {
                                let due =
                                    active.activate_at.unwrap() + TimeDelta::seconds(*s as i64);
                                assert_eq!(
                                    planned,
                                    due.max(now + self.pa()),
                                    "{kid}: rotate_every"
                                );
                            }
                            cron => {
                                check_cron_point(cron, planned);
                                assert!(
                                    planned - (now + self.pa())
                                        <= TimeDelta::seconds(cron.period()),
                                    "{kid}: {planned} is not the first point after {}",
                                    now + self.pa()
                                );
                            }
                        }
                    } else {
                        assert_eq!(k.state, KeyState::Active);
                        assert_eq!(k.version, 1, "{kid}: only bootstrap generates a signer");
                        // Its `activated` event follows at once.
                        self.bootstrapped.insert(e.alg);
                    }
                }
                EventKind::Activated => {
                    self.activations += 1;
                    assert!(
                        activated_now.insert(e.alg),
                        "two activations of {} in one tick",
                        e.alg
                    );
                    assert_eq!(k.state, KeyState::Active, "{kid}");
                    assert_eq!(
                        k.activate_at,
                        Some(now),
                        "{kid}: activate_at is the actual time"
                    );
                    match old {
                        Some(old) => {
                            // Rule 1.
                            assert_eq!(old.state, KeyState::Pending, "{kid}");
                            assert!(!k.emergency, "{kid}: scheduled activation marked emergency");
                            let planned = old.activate_at.unwrap();
                            let published_enough = old.publish_at + self.pa();
                            assert!(
                                now >= published_enough,
                                "{kid}: rule 1: signs at {now}, published at {}",
                                old.publish_at
                            );
                            assert!(
                                now >= planned,
                                "{kid}: activated at {now} before planned {planned}"
                            );
                            if !late {
                                assert_eq!(
                                    now,
                                    planned.max(published_enough),
                                    "{kid}: activated late without downtime"
                                );
                            }
                        }
                        None => {
                            assert!(
                                generated_now.contains(kid),
                                "{kid}: activated out of nowhere"
                            );
                            assert_eq!(k.version, 1, "{kid}: only the very first key skips rule 1");
                        }
                    }
                    self.bootstrapped.insert(e.alg);
                }
                EventKind::Deactivated => {
                    assert!(
                        activated_now.contains(&e.alg),
                        "{kid}: deactivated before its successor activated"
                    );
                    assert_eq!(old.map(|o| o.state), Some(KeyState::Active), "{kid}");
                    assert_eq!(k.state, KeyState::Retiring, "{kid}");
                    assert_eq!(k.deactivate_at, Some(now), "{kid}");
                    assert_eq!(k.retire_at, Some(now + self.grace()), "{kid}: rule 3");
                }
                EventKind::Retired => {
                    let old = old.expect("retired key existed");
                    assert_eq!(old.state, KeyState::Retiring, "{kid}");
                    let out_at = old.deactivate_at.unwrap() + self.grace();
                    assert!(
                        now >= out_at,
                        "{kid}: rule 3: retired {now} before {out_at}"
                    );
                    if !late {
                        assert_eq!(now, out_at, "{kid}: retired late without downtime");
                    }
                    assert_eq!(k.state, KeyState::Retired);
                }
                other => panic!("unexpected {other:?} event in a plain simulation"),
            }
            // Rule 2 at every event: one signer per bootstrapped alg.
            for &alg in &self.case.algorithms {
                let n = e
                    .after
                    .iter()
                    .filter(|k| k.alg == alg && k.state == KeyState::Active)
                    .count();
                if self.bootstrapped.contains(&alg) {
                    assert_eq!(
                        n, 1,
                        "rule 2: {n} active {alg} keys after {:?} {kid}",
                        e.kind
                    );
                } else {
                    assert_eq!(n, 0, "an active {alg} key without an activation event");
                }
            }
            // The snapshot is the set's keys, and only the set's.
            assert!(e.after.iter().all(|k| k.set == e.set));
        }

        // The whole store after the tick.
        let mut kids = HashSet::new();
        for k in after {
            assert!(
                kids.insert(k.kid.clone()),
                "rule 5: duplicate kid {}",
                k.kid
            );
            assert_eq!(
                k.sealed_private.is_some(),
                k.state.holds_private(),
                "{}: private half while {}",
                k.kid,
                k.state
            );
            if let Some(prev) = self.states.insert(k.kid.to_string(), k.state) {
                assert!(
                    rank(prev) <= rank(k.state),
                    "{}: {prev} -> {}",
                    k.kid,
                    k.state
                );
                if prev != k.state {
                    assert!(
                        events.iter().any(|e| e.kid == k.kid),
                        "{}: changed silently",
                        k.kid
                    );
                }
            } else {
                check_kid(k);
            }
            match k.state {
                KeyState::Retiring => {
                    let out = k.deactivate_at.unwrap() + self.grace();
                    assert_eq!(k.retire_at, Some(out), "{}", k.kid);
                    assert!(now < out, "{}: should have retired at {out}", k.kid);
                }
                KeyState::Retired => {
                    assert!(
                        k.retire_at.unwrap() <= now
                            && k.retire_at == k.deactivate_at.map(|d| d + self.grace())
                    );
                }
                _ => {}
            }
        }
        assert_eq!(
            self.states.len(),
            after.len(),
            "a key vanished from the store"
        );
        for &alg in &self.case.algorithms {
            let own: Vec<&StoredKey> = after.iter().filter(|k| k.alg == alg).collect();
            // Rule 5: versions 1..=n in order.
            let versions: Vec<u32> = own.iter().map(|k| k.version).collect();
            assert_eq!(
                versions,
                (1..=own.len() as u32).collect::<Vec<_>>(),
                "{alg} versions"
            );
            // Rules 2 and 4.
            let active: Vec<&&StoredKey> =
                own.iter().filter(|k| k.state == KeyState::Active).collect();
            let pending: Vec<&&StoredKey> = own
                .iter()
                .filter(|k| k.state == KeyState::Pending)
                .collect();
            assert_eq!(active.len(), 1, "rule 2 after tick: {alg}");
            assert_eq!(
                pending.len(),
                1,
                "rule 4: {alg} active key without successor"
            );
            assert_eq!(pending[0].version, active[0].version + 1);
            assert_eq!(
                pending[0].version as usize,
                own.len(),
                "pending is the newest"
            );
            // The handover is seamless: each key signed from when its predecessor stopped.
            for w in own.windows(2) {
                if let Some(d) = w[0].deactivate_at {
                    assert_eq!(w[1].activate_at, Some(d), "{} -> {}", w[0].kid, w[1].kid);
                }
            }
        }
    }
}

fn sim_case(case: Case) -> (usize, usize) {
    let policy = Policy::from_toml(Path::new("prop.toml"), &case.toml())
        .unwrap_or_else(|e| panic!("{e}\n{}", case.toml()));
    let start = utc("2026-01-01T00:00:00Z") + TimeDelta::seconds(case.start_offset);
    let end = start + TimeDelta::days(SIM_DAYS);
    let mut downtimes: Vec<(DateTime<Utc>, TimeDelta)> = case
        .downtimes
        .iter()
        .map(|&(at, span)| (start + TimeDelta::seconds(at), TimeDelta::seconds(span)))
        .collect();
    downtimes.reverse();
    let mut checker = Checker::new(case, policy.clone());
    runtime().block_on(async {
        let sim = Simulation::new(policy, start).await.unwrap();
        let mut late = false;
        loop {
            let now = sim.clock.now();
            let before = sim.keys().await.unwrap();
            let events = sim.tick().await.unwrap();
            let after = sim.keys().await.unwrap();
            checker.tick(now, late, &before, &events, &after);
            assert_eq!(sim.clock.now(), now, "a tick does not move the clock");
            // Rule 6: after a tick nothing is due until a stored timestamp.
            let next = sim
                .executor
                .next_due()
                .await
                .unwrap()
                .expect("a pending key is always due");
            assert!(next > now, "still due after the tick: {next}");
            match downtimes.last() {
                Some(&(down, span)) if down < next => {
                    downtimes.pop();
                    sim.clock.set(down.max(now) + span);
                    late = true;
                }
                _ => {
                    sim.clock.set(next);
                    late = false;
                }
            }
            if sim.clock.now() > end {
                break;
            }
        }
    });
    (checker.activations, checker.events)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 40,
        max_shrink_iters: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// rotate_every policies over two years with random downtime.
    #[test]
    fn rotate_every_keeps_every_timing_rule_for_two_years(case in case(sched_every())) {
        let (activations, _) = sim_case(case);
        prop_assert!(activations > 0);
    }

    /// cron policies (daily/weekly/monthly, UTC or across DST) over two
    /// years with random downtime.
    #[test]
    fn cron_keeps_every_timing_rule_for_two_years(case in case(sched_cron())) {
        let (activations, _) = sim_case(case);
        prop_assert!(activations > 0);
    }
}

// ---------------------------------------------------------------------------
// DST
// ---------------------------------------------------------------------------

fn activations_between(toml: &str, start: &str, end: &str) -> Vec<DateTime<Utc>> {
    let policy = Policy::from_toml(Path::new("dst.toml"), toml).unwrap();
    runtime().block_on(async {
        let sim = Simulation::new(policy, utc(start)).await.unwrap();
        let mut acts = Vec::new();
        sim.run_until(utc(end), |e| {
            if e.kind == EventKind::Activated {
                acts.push(e.at);
            }
        })
        .await
        .unwrap();
        acts
    })
}

const DAILY_NY: &str = "name = \"dst\"\nalgorithms = [\"ES384\"]\ntimezone = \"America/New_York\"\n\
     publish_ahead = \"1h\"\njwks_max_age = \"1h\"\ngrace = \"2h\"\n";

#[test]
fn daily_cron_in_the_spring_forward_gap_runs_right_after_the_gap() {
    let toml = format!("{DAILY_NY}rotate = \"0 30 2 * * *\"\n");
    let acts = activations_between(&toml, "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z");
    let ny: Tz = "America/New_York".parse().unwrap();
    // Bootstrap, then one activation per day, Mar 1..=31.
    assert_eq!(acts[0], utc("2026-03-01T00:00:00Z"));
    let mut expected = Vec::new();
    for day in 1..=31 {
        let t = match ny.with_ymd_and_hms(2026, 3, day, 2, 30, 0) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            // 02:30 on 2026-03-08 does not exist: 03:00 EDT.
            LocalResult::None => utc("2026-03-08T07:00:00Z"),
            LocalResult::Ambiguous(..) => unreachable!("no repeat in March"),
        };
        expected.push(t);
    }
    assert_eq!(&acts[1..], &expected[..]);
    assert!(acts.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    for t in &acts[1..] {
        // A real instant: its local time maps back to exactly it.
        let local = t.with_timezone(&ny).naive_local();
        assert_eq!(
            ny.from_local_datetime(&local)
                .earliest()
                .unwrap()
                .with_timezone(&Utc),
            *t
        );
    }
    assert_eq!(acts[8], utc("2026-03-08T07:00:00Z"));
    assert_eq!(acts[9], utc("2026-03-09T06:30:00Z"));
}

#[test]
fn daily_cron_in_the_fall_back_repeat_runs_once() {
    let toml = format!("{DAILY_NY}rotate = \"0 30 1 * * *\"\n");
    let acts = activations_between(&toml, "2026-10-30T00:00:00Z", "2026-11-04T00:00:00Z");
    assert_eq!(
        &acts[1..],
        &[
            utc("2026-10-30T05:30:00Z"),
            utc("2026-10-31T05:30:00Z"),
            utc("2026-11-01T05:30:00Z"), // 01:30 EDT, the first of two
            utc("2026-11-02T06:30:00Z"), // 01:30 EST
            utc("2026-11-03T06:30:00Z"),
        ]
    );
}

// ---------------------------------------------------------------------------
// `jwksd simulate` output
// ---------------------------------------------------------------------------

fn simulate(json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jwksd"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "simulate",
        "--policy",
        "policies/default.toml",
        "--days",
        "100",
        "--start",
        "2026-01-01T00:00:00Z",
    ]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn simulate_json_prints_each_event_then_its_jwks_snapshot_in_causal_order() {
    let text = simulate(true);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        !lines.is_empty() && lines.len().is_multiple_of(2),
        "{} lines",
        lines.len()
    );
    let mut events: Vec<(DateTime<Utc>, String, String, String)> = Vec::new();
    let mut published: BTreeMap<String, String> = BTreeMap::new(); // kid -> alg
    for pair in lines.chunks(2) {
        let (ev, snap) = (&pair[0], &pair[1]);
        for l in pair {
            let at = l["at"].as_str().unwrap();
            assert!(at.ends_with('Z'), "{at}");
            DateTime::parse_from_rfc3339(at).unwrap();
            assert_eq!(l["set"], "default");
        }
        let obj = ev.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["alg", "at", "event", "kid", "set"], "{ev}");
        let kind = ev["event"].as_str().unwrap().to_owned();
        let kid = ev["kid"].as_str().unwrap().to_owned();
        let alg = ev["alg"].as_str().unwrap().to_owned();
        assert!(["RS384", "ES384"].contains(&alg.as_str()));
        assert!(
            kid.starts_with(&format!("default-{}-v", alg.to_lowercase())),
            "{kid}"
        );
        assert_eq!(snap["event"], "jwks", "{snap}");
        assert_eq!(snap["at"], ev["at"]);
        let mut skeys: Vec<&str> = snap
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        skeys.sort();
        assert_eq!(skeys, ["active", "at", "event", "kids", "set"], "{snap}");
        match kind.as_str() {
            "generated" => {
                published.insert(kid.clone(), alg.clone());
            }
            "retired" | "revoked" => {
                published.remove(&kid);
            }
            "activated" | "deactivated" => {}
            other => panic!("unknown event {other}"),
        }
        let kids: Vec<String> = snap["kids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        let mut sorted = kids.clone();
        sorted.sort();
        assert_eq!(kids, sorted, "kids in plain string order");
        assert_eq!(
            kids,
            published.keys().cloned().collect::<Vec<_>>(),
            "snapshot after {ev}"
        );
        let active = snap["active"].as_object().unwrap();
        for (a, k) in active {
            assert!(["RS384", "ES384"].contains(&a.as_str()), "{snap}");
            assert_eq!(published.get(k.as_str().unwrap()), Some(a), "{snap}");
        }
        match kind.as_str() {
            "activated" => assert_eq!(active[&alg], kid.as_str()),
            "deactivated" => assert_ne!(active[&alg], kid.as_str()),
            _ => {}
        }
        let at = utc(ev["at"].as_str().unwrap());
        events.push((at, kind, alg, kid));
    }
    // The first snapshot: only RS384 is active yet, ES384 absent.
    assert_eq!(lines[0]["event"], "generated");
    assert_eq!(lines[3]["event"], "jwks");
    assert_eq!(lines[3]["active"].as_object().unwrap().len(), 1);

    // Causal order within one instant: activated -> deactivated -> generated (successor).
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        let group: Vec<&(DateTime<Utc>, String, String, String)> =
            events[i..].iter().take_while(|e| e.0 == at).collect();
        for alg in ["RS384", "ES384"] {
            let pos = |kind: &str| {
                group.iter().position(|e| {
                    e.1 == kind
                        && e.2 == alg
                        && !(kind == "generated"
                            && group.iter().any(|a| a.1 == "activated" && a.3 == e.3))
                })
            };
            if let Some(d) = pos("deactivated") {
                assert!(
                    pos("activated").is_some_and(|a| a < d),
                    "{at} {alg}: {group:?}"
                );
            }
            if let (Some(a), Some(g)) = (pos("activated"), pos("generated")) {
                assert!(a < g, "{at} {alg}: {group:?}");
            }
            if let (Some(d), Some(g)) = (pos("deactivated"), pos("generated")) {
                assert!(d < g, "{at} {alg}: {group:?}");
            }
        }
        i += group.len();
    }

    // Monthly at 03:00 UTC on the 1st, publish_ahead 2d, grace 7d, 100 days:
    // rotations on Feb 1, Mar 1 and Apr 1, per alg.
    let times = |kind: &str, alg: &str| -> Vec<DateTime<Utc>> {
        events
            .iter()
            .filter(|e| e.1 == kind && e.2 == alg)
            .map(|e| e.0)
            .collect()
    };
    for alg in ["RS384", "ES384"] {
        assert_eq!(
            times("activated", alg),
            [
                utc("2026-01-01T00:00:00Z"),
                utc("2026-02-01T03:00:00Z"),
                utc("2026-03-01T03:00:00Z"),
                utc("2026-04-01T03:00:00Z"),
            ]
        );
        assert_eq!(times("deactivated", alg), times("activated", alg)[1..]);
        assert_eq!(
            times("retired", alg),
            [
                utc("2026-02-08T03:00:00Z"),
                utc("2026-03-08T03:00:00Z"),
                utc("2026-04-08T03:00:00Z"),
            ]
        );
        assert_eq!(times("generated", alg).len(), 5);
    }
}

#[test]
fn simulate_text_prints_one_readable_line_per_event() {
    let json_events = simulate(true).lines().count() / 2;
    let text = simulate(false);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("default") && header.contains("100 days"),
        "{header}"
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), json_events);
    for l in &body {
        assert!(l.starts_with("2026-"), "{l}");
        assert!(
            ["generated", "activated", "deactivated", "retired"]
                .iter()
                .any(|k| l.contains(k)),
            "{l}"
        );
        assert!(l.contains("default-"), "{l}");
    }
    assert!(body[0].starts_with("2026-01-01 00:00:00"), "{}", body[0]);
}

// ---------------------------------------------------------------------------
// Operator actions (rule 8) on the real scheduler
// ---------------------------------------------------------------------------

const MONTHLY_RS: &str = "name = \"ops\"\nalgorithms = [\"RS384\"]\nrotate_every = \"30d\"\n\
     publish_ahead = \"2d\"\ngrace = \"7d\"\n";

fn ops_keys(keys: &[StoredKey]) -> Vec<(u32, KeyState, bool)> {
    keys.iter()
        .map(|k| (k.version, k.state, k.sealed_private.is_some()))
        .collect()
}

/// A bootstrapped `ops` set at 2026-01-01 (v1 active, v2 pending for Jan 31).
async fn ops_sim() -> Simulation {
    let policy = Policy::from_toml(Path::new("ops.toml"), MONTHLY_RS).unwrap();
    let sim = Simulation::new(policy, utc("2026-01-01T00:00:00Z"))
        .await
        .unwrap();
    sim.tick().await.unwrap();
    sim
}

fn kinds(events: &[Event]) -> Vec<(EventKind, u32)> {
    events
        .iter()
        .map(|e| {
            let v = e.after.iter().find(|k| k.kid == e.kid).unwrap().version;
            // Rule 2 at every event.
            let active = e
                .after
                .iter()
                .filter(|k| k.state == KeyState::Active)
                .count();
            assert_eq!(active, 1, "rule 2 after {:?}", e.kind);
            (e.kind, v)
        })
        .collect()
}

#[test]
fn rotate_without_now_moves_the_pending_key_forward_but_keeps_publish_ahead() {
    runtime().block_on(async {
        let sim = ops_sim().await;
        let set = jwksd::types::SetName::new("ops").unwrap();
        sim.clock.set(utc("2026-01-01T12:00:00Z"));
        let (outs, _) = sim.executor.rotate(&set, None, false).await.unwrap();
        let [out] = &outs[..] else {
            panic!("one algorithm, one outcome: {outs:?}")
        };
        assert_eq!(out.activated, None);
        assert_eq!(out.handover, None, "nothing activated, nothing handed over");
        let keys = sim.keys().await.unwrap();
        // Published at 00:00 on Jan 1: signs no earlier than Jan 3 00:00.
        assert_eq!(keys[1].activate_at, Some(utc("2026-01-03T00:00:00Z")));
        sim.clock.set(utc("2026-01-02T23:59:59Z"));
        assert!(sim.tick().await.unwrap().is_empty());
        sim.clock.set(utc("2026-01-03T00:00:00Z"));
        let events = sim.tick().await.unwrap();
        assert_eq!(
            kinds(&events),
            [
                (EventKind::Activated, 2),
                (EventKind::Deactivated, 1),
                (EventKind::Generated, 3)
            ]
        );
        let keys = sim.keys().await.unwrap();
        assert!(!keys[1].emergency);
        assert_eq!(keys[2].activate_at, Some(utc("2026-02-02T00:00:00Z")));
    });
}

#[test]
fn rotate_now_activates_the_pending_key_at_once_and_generates_its_successor() {
    runtime().block_on(async {
        let sim = ops_sim().await;
        let set = jwksd::types::SetName::new("ops").unwrap();
        let now = utc("2026-01-01T00:00:10Z");
        sim.clock.set(now);
        let (outs, events) = sim.executor.rotate(&set, None, true).await.unwrap();
        let [out] = &outs[..] else {
            panic!("one algorithm, one outcome: {outs:?}")
        };
        let keys = sim.keys().await.unwrap();
        assert_eq!(out.activated.as_ref(), Some(&keys[1].kid));
        // v2 was published at bootstrap, 10 s ago: a verifier that cached
        // the JWKS just before may refuse it for jwks_max_age (1h).
        let handover = out
            .handover
            .as_ref()
            .expect("rotate --now reports its hand-over");
        assert_eq!(handover.kid, keys[1].kid);
        assert_eq!(handover.published_at, utc("2026-01-01T00:00:00Z"));
        assert_eq!(handover.published_s_ago, 10);
        assert_eq!(
            handover.caches_may_refuse_until,
            Some(utc("2026-01-01T01:00:00Z"))
        );
        assert_eq!(out.deactivated.as_ref(), Some(&keys[0].kid));
        assert_eq!(out.pending.as_ref(), Some(&keys[2].kid));
        assert_eq!(
            kinds(&events),
            [
                (EventKind::Activated, 2),
                (EventKind::Deactivated, 1),
                (EventKind::Generated, 3)
            ]
        );
        assert_eq!(
            ops_keys(&keys),
            [
                (1, KeyState::Retiring, false),
                (2, KeyState::Active, true),
                (3, KeyState::Pending, true)
            ]
        );
        assert!(keys[1].emergency);
        assert_eq!(keys[0].retire_at, Some(now + TimeDelta::days(7)));
        assert_eq!(keys[2].activate_at, Some(now + TimeDelta::days(30)));
    });
}

#[test]
fn rotate_now_without_alg_rotates_every_algorithm_of_the_set() {
    runtime().block_on(async {
        let text = MONTHLY_RS.replace(r#"["RS384"]"#, r#"["RS384", "ES384"]"#);
        let policy = Policy::from_toml(Path::new("ops.toml"), &text).unwrap();
        let sim = Simulation::new(policy, utc("2026-01-01T00:00:00Z"))
            .await
            .unwrap();
        sim.tick().await.unwrap();
        let set = jwksd::types::SetName::new("ops").unwrap();
        sim.clock.set(utc("2026-01-01T00:00:30Z"));
        let (outs, _) = sim.executor.rotate(&set, None, true).await.unwrap();
        let algs: Vec<Alg> = outs.iter().map(|o| o.alg).collect();
        assert_eq!(algs, [Alg::Rs384, Alg::Es384], "every alg, in policy order");
        let keys = sim.keys().await.unwrap();
        for out in &outs {
            let signer = keys
                .iter()
                .find(|k| k.alg == out.alg && k.state == KeyState::Active)
                .unwrap();
            assert_eq!(out.activated.as_ref(), Some(&signer.kid), "{out:?}");
            assert_eq!(signer.version, 2, "{out:?}");
            assert!(signer.emergency);
            assert_eq!(out.handover.as_ref().unwrap().published_s_ago, 30);
        }
        // With --alg, only that one.
        let (outs, _) = sim
            .executor
            .rotate(&set, Some(Alg::Es384), true)
            .await
            .unwrap();
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].alg, Alg::Es384);
        let keys = sim.keys().await.unwrap();
        let active: Vec<(Alg, u32)> = keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .map(|k| (k.alg, k.version))
            .collect();
        assert!(active.contains(&(Alg::Rs384, 2)), "{active:?}");
        assert!(active.contains(&(Alg::Es384, 3)), "{active:?}");
    });
}

#[test]
fn revoking_the_active_key_hands_over_to_its_successor_at_once() {
    runtime().block_on(async {
        let sim = ops_sim().await;
        let now = utc("2026-01-05T00:00:00Z");
        sim.clock.set(now);
        let v1 = sim.keys().await.unwrap()[0].kid.clone();
        let (out, events) = sim.executor.revoke(&v1).await.unwrap();
        let keys = sim.keys().await.unwrap();
        assert_eq!(out.activated.as_ref(), Some(&keys[1].kid));
        // v2 was published four days ago: every cached JWKS has it.
        let handover = out
            .handover
            .as_ref()
            .expect("revoking the signer reports its hand-over");
        assert_eq!(handover.kid, keys[1].kid);
        assert_eq!(handover.published_s_ago, 4 * 86_400);
        assert_eq!(handover.caches_may_refuse_until, None);
        assert_eq!(
            kinds(&events),
            [
                (EventKind::Revoked, 1),
                (EventKind::Activated, 2),
                (EventKind::Generated, 3)
            ]
        );
        assert_eq!(
            ops_keys(&keys),
            [
                (1, KeyState::Revoked, false),
                (2, KeyState::Active, true),
                (3, KeyState::Pending, true)
            ]
        );
        assert!(keys[1].emergency);
        // Revoking the pending key: a new successor, the signer unchanged.
        let v3 = keys[2].kid.clone();
        let (out, events) = sim.executor.revoke(&v3).await.unwrap();
        assert_eq!(out.activated, None);
        assert_eq!(out.handover, None);
        assert_eq!(
            kinds(&events),
            [(EventKind::Revoked, 3), (EventKind::Generated, 4)]
        );
        let keys = sim.keys().await.unwrap();
        assert_eq!(keys[3].state, KeyState::Pending);
        assert!(keys[3].activate_at.unwrap() >= now + TimeDelta::days(2));
        // A revoked key cannot be revoked again.
        assert!(sim.executor.revoke(&v1).await.is_err());
    });
}
