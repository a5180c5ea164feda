//! The lifecycle as a picture: `simulate --svg` checked bar by bar against
//! the events of the same run (to the pixel), for a cron and a
//! `rotate_every` policy over a year; the live picture over the socket
//! (`keys timeline --svg`) and the admin listener's `/status` page.

mod helpers;

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::Value;

const START: &str = "2026-01-01T00:00:00Z";
const DAYS: i64 = 365;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Runs `simulate --json --svg` on `policy` and returns the event lines and
/// the SVG text of that one run.
fn simulate(policy: &str) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, policy).unwrap();
    let svg = dir.path().join("t.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_jwksd"))
        .args(["simulate", "--policy"])
        .arg(&file)
        .args([
            "--days",
            &DAYS.to_string(),
            "--start",
            START,
            "--json",
            "--svg",
        ])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] != "jwks")
        .collect();
    (events, std::fs::read_to_string(svg).unwrap())
}

/// A bar as drawn: kid, state, x, width, and the instants it claims.
#[derive(Debug, Clone)]
struct Drawn {
    kid: String,
    state: String,
    x: f64,
    width: f64,
    planned: bool,
}

/// The time axis the SVG declares, and its bars.
struct Picture {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    plot_x: f64,
    plot_width: f64,
    bars: Vec<Drawn>,
    marks: Vec<(String, DateTime<Utc>, f64)>,
    ticks: Vec<(DateTime<Utc>, f64, String)>,
}

impl Picture {
    fn parse(svg: &str) -> Picture {
        let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let num = |n: roxmltree::Node, a: &str| -> f64 { n.attribute(a).unwrap().parse().unwrap() };
        let classes = |n: roxmltree::Node| -> Vec<String> {
            n.attribute("class")
                .unwrap_or("")
                .split(' ')
                .map(str::to_owned)
                .collect()
        };
        let bars = root
            .descendants()
            .filter(|n| n.has_tag_name("rect") && classes(*n).contains(&"span".to_owned()))
            .map(|n| Drawn {
                kid: n.attribute("data-kid").unwrap().to_owned(),
                state: n.attribute("data-state").unwrap().to_owned(),
                x: num(n, "x"),
                width: num(n, "width"),
                planned: classes(n).contains(&"planned".to_owned()),
            })
            .collect();
        let marks = root
            .descendants()
            .filter(|n| n.has_tag_name("line") && classes(*n).contains(&"mark".to_owned()))
            .map(|n| {
                (
                    classes(n)[1].clone(),
                    utc(n.attribute("data-at").unwrap()),
                    num(n, "x1"),
                )
            })
            .collect();
        let ticks = root
            .descendants()
            .filter(|n| n.has_tag_name("line") && classes(*n) == ["tick"])
            .map(|n| {
                let label = n.next_sibling_element().unwrap().text().unwrap().to_owned();
                (utc(n.attribute("data-at").unwrap()), num(n, "x1"), label)
            })
            .collect();
        Picture {
            start: utc(root.attribute("data-start").unwrap()),
            end: utc(root.attribute("data-end").unwrap()),
            plot_x: num(root, "data-plot-x"),
            plot_width: num(root, "data-plot-width"),
            bars,
            marks,
            ticks,
        }
    }

    /// Where instant `t` belongs on the declared axis.
    fn x(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.end - self.start).num_seconds() as f64;
        self.plot_x + (t - self.start).num_seconds() as f64 * self.plot_width / total
    }
}

/// What the events say each kid did: (kid, state) -> [from, to), cut at
/// the end of the run.
fn spans_from_events(
    events: &[Value],
    end: DateTime<Utc>,
) -> BTreeMap<(String, String), (DateTime<Utc>, DateTime<Utc>)> {
    let mut open: BTreeMap<String, (String, DateTime<Utc>)> = BTreeMap::new();
    let mut spans = BTreeMap::new();
    for e in events {
        let kid = e["kid"].as_str().unwrap().to_owned();
        let at = utc(e["at"].as_str().unwrap());
        let next = match e["event"].as_str().unwrap() {
            "generated" => Some("pending"),
            "activated" => Some("active"),
            "deactivated" => Some("retiring"),
            "retired" | "revoked" => None,
            other => panic!("unexpected event {other}"),
        };
        if let Some((state, from)) = open.remove(&kid)
            && from < at
        {
            spans.insert((kid.clone(), state), (from, at));
        }
        if let Some(state) = next {
            open.insert(kid, (state.to_owned(), at));
        }
    }
    for (kid, (state, from)) in open {
        if from < end {
            spans.insert((kid, state), (from, end));
        }
    }
    spans
}

/// Every bar sits where the events put it, to a pixel, and every span of
/// the events is drawn; plus the rules made visible.
fn check_year(policy_text: &str, publish_ahead: Duration, grace: Duration) -> Picture {
    let (events, svg) = simulate(policy_text);
    let pic = Picture::parse(&svg);
    assert_eq!(pic.start, utc(START));
    assert_eq!(pic.end, utc(START) + Duration::days(DAYS));
    let expected = spans_from_events(&events, pic.end);
    assert!(
        expected.len() > 30,
        "a year of rotations: {}",
        expected.len()
    );
    assert_eq!(
        pic.bars.len(),
        expected.len(),
        "one bar per span of the events"
    );
    for bar in &pic.bars {
        assert!(!bar.planned, "a simulation draws what happened: {bar:?}");
        let (from, to) = expected
            .get(&(bar.kid.clone(), bar.state.clone()))
            .unwrap_or_else(|| panic!("bar without an event span: {bar:?}"));
        assert!(
            (bar.x - pic.x(*from)).abs() <= 1.0,
            "{bar:?} starts at {from}"
        );
        let width = pic.x(*to) - pic.x(*from);
        assert!(
            (bar.width - width).abs() <= 1.0,
            "{bar:?} spans {from}..{to}"
        );
    }
    let px = |d: Duration| {
        d.num_seconds() as f64 * pic.plot_width / (pic.end - pic.start).num_seconds() as f64
    };
    for ((kid, state), (from, to)) in &expected {
        let cut = *to == pic.end;
        match state.as_str() {
            // Rule 1 made visible (the bootstrap keys excepted: nothing to
            // overlap with, they sign at once).
            "pending" if !cut && kid.split('-').nth(2) != Some("v1") => {
                assert!(*to - *from >= publish_ahead, "{kid} pending {from}..{to}")
            }
            // Rule 3: a retiring bar is exactly `grace` long.
            "retiring" if !cut => {
                let bar = pic
                    .bars
                    .iter()
                    .find(|b| &b.kid == kid && b.state == "retiring")
                    .unwrap();
                assert!((bar.width - px(grace)).abs() <= 1.0, "{kid}: {bar:?}");
            }
            _ => {}
        }
    }
    // Rule 2 made visible: per alg, active bars tile the axis without
    // overlap from the first activation to the end.
    for alg in ["rs384", "es384"] {
        let mut active: Vec<&Drawn> = pic
            .bars
            .iter()
            .filter(|b| b.state == "active" && b.kid.contains(&format!("-{alg}-")))
            .collect();
        active.sort_by(|a, b| a.x.total_cmp(&b.x));
        assert!(active.len() > 3, "{alg}: {active:?}");
        for pair in active.windows(2) {
            let gap = pair[1].x - (pair[0].x + pair[0].width);
            assert!(gap.abs() <= 0.02, "{alg}: one signer at a time: {pair:?}");
        }
        let last = active.last().unwrap();
        assert!((last.x + last.width - (pic.plot_x + pic.plot_width)).abs() <= 0.02);
    }
    // The axis: ticks in order, each where its date belongs, labelled.
    assert!(pic.ticks.len() >= 6, "{:?}", pic.ticks);
    for (at, x, label) in &pic.ticks {
        assert!((x - pic.x(*at)).abs() <= 1.0, "tick {at} at {x}");
        assert_eq!(label, &at.format("%Y-%m-%d").to_string());
    }
    for (kind, at, x) in &pic.marks {
        assert!((x - pic.x(*at)).abs() <= 1.0, "{kind} mark {at} at {x}");
    }
    // A legend for the three states.
    for phase in ["pending: published", "active: signs", "retiring: published"] {
        assert!(svg.contains(phase), "legend lacks {phase}");
    }
    pic
}

const CRON: &str = r#"name = "default"
algorithms = ["RS384", "ES384"]
rotate = "0 0 3 1 * *"
publish_ahead = "2d"
grace = "7d"
"#;

const EVERY: &str = r#"name = "every"
algorithms = ["RS384", "ES384"]
rotate_every = "20d"
publish_ahead = "3d"
grace = "5d"
"#;

#[test]
fn simulate_svg_draws_every_span_of_a_cron_year_where_its_events_put_it() {
    let pic = check_year(CRON, Duration::days(2), Duration::days(7));
    // The schedule points are marked: the 1st of each month, 03:00.
    // Each (set, alg) group draws them across its own rows.
    let mut points: Vec<DateTime<Utc>> = pic
        .marks
        .iter()
        .filter(|(k, _, _)| k == "schedule")
        .map(|(_, at, _)| *at)
        .collect();
    assert_eq!(points.len(), 2 * 12, "{points:?}");
    points.sort();
    points.dedup();
    assert_eq!(points.len(), 12, "{points:?}");
    assert!(
        points
            .iter()
            .all(|p| p.format("%d %H:%M").to_string() == "01 03:00")
    );
}

#[test]
fn simulate_svg_draws_every_span_of_a_rotate_every_year_where_its_events_put_it() {
    let pic = check_year(EVERY, Duration::days(3), Duration::days(5));
    // rotate_every: every scheduled activation is a schedule point.
    let points = pic.marks.iter().filter(|(k, _, _)| k == "schedule").count();
    assert_eq!(points, 2 * (DAYS as usize / 20), "{:?}", pic.marks);
}

#[test]
fn simulate_with_svg_still_prints_the_text_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, CRON).unwrap();
    let svg = dir.path().join("t.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_jwksd"))
        .args(["simulate", "--policy"])
        .arg(&file)
        .args(["--days", "60", "--start", START, "--svg"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("simulating set default"), "{text}");
    assert!(text.contains("activated"), "{text}");
    assert!(
        Picture::parse(&std::fs::read_to_string(svg).unwrap())
            .bars
            .len()
            > 4
    );
}

/// The live picture: what `keys list` says, drawn, with a now line and the
/// plan after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_timeline_draws_the_live_keys_with_their_plan_and_a_now_line() {
    let d = Daemon::start(&policy("")).when_settled().await;
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let file = d.dir.join("live.svg");
    let out = d.cli(&["keys", "timeline", "--svg", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&file).unwrap();
    let pic = Picture::parse(&svg);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let now = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("now"))
        .expect("a now line");
    let now_at = utc(now.attribute("data-at").unwrap());
    let now_x: f64 = now.attribute("x1").unwrap().parse().unwrap();
    assert!((now_x - pic.x(now_at)).abs() <= 1.0);
    for k in keys.as_array().unwrap() {
        let kid = k["kid"].as_str().unwrap();
        let state = k["state"].as_str().unwrap();
        let mine: Vec<&Drawn> = pic.bars.iter().filter(|b| b.kid == kid).collect();
        // The current state is drawn up to now (when it began a moment
        // ago, that part is under a pixel and may be left out), and goes
        // on planned from now.
        if let Some(past) = mine.iter().find(|b| b.state == state && !b.planned) {
            assert!((past.x + past.width - now_x).abs() <= 1.0, "{past:?}");
        }
        let planned = mine
            .iter()
            .find(|b| b.state == state && b.planned)
            .unwrap_or_else(|| panic!("{kid} {state}: {mine:?}"));
        assert!(
            (planned.x - now_x).abs() <= 1.0,
            "{planned:?} starts at now"
        );
        if state == "pending" {
            // Planned: it activates at its stored activate_at.
            let active = mine.iter().find(|b| b.state == "active").unwrap();
            assert!((active.x - pic.x(utc(k["activate_at"].as_str().unwrap()))).abs() <= 1.0);
        }
    }
    // Emergencies are marked: a rotate --now and a revocation.
    let (_, rotated) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(serde_json::json!({"set": "default", "alg": "ES384", "now": true})),
        )
        .await;
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let pending_rs = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["alg"] == "RS384" && k["state"] == "pending")
        .unwrap()["kid"]
        .clone();
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/admin/revoke",
            Some(serde_json::json!({"kid": pending_rs})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let out = d.cli(&["keys", "timeline", "--svg", file.to_str().unwrap()]);
    assert!(out.status.success());
    let svg = std::fs::read_to_string(&file).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let mark = |kind: &str, kid: &Value| {
        doc.descendants()
            .find(|n| {
                n.attribute("class") == Some(&format!("mark {kind}"))
                    && n.attribute("data-kid") == kid.as_str()
            })
            .is_some()
    };
    assert!(
        mark("emergency", &rotated["activated"]),
        "rotate --now is marked"
    );
    assert!(mark("revoked", &pending_rs), "the revocation is marked");
    // Another caller's set, or one that does not exist: the same 404.
    let out = d.cli(&[
        "keys",
        "timeline",
        "--svg",
        file.to_str().unwrap(),
        "--set",
        "nope",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key set named \"nope\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_each_set_its_signers_next_transition_and_the_audit_head() {
    let d = Daemon::start(&policy("")).when_settled().await;
    d.assertion("ES384").await;
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let (_, audit) = d.socket_json(Method::GET, "/v1/audit?limit=1", None).await;
    let (status, headers, body) = http(d.admin, Method::GET, "/status", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = String::from_utf8(body.to_vec()).unwrap();
    assert!(!html.to_lowercase().contains("<script"), "no scripts");
    for attr in ["src=", "href="] {
        assert!(!html.contains(attr), "no external assets ({attr})");
    }
    let keys = keys.as_array().unwrap();
    for alg in ["RS384", "ES384"] {
        let signer = keys
            .iter()
            .find(|k| k["alg"] == alg && k["state"] == "active")
            .unwrap();
        let row = format!(
            "<tr class=\"signer\" data-alg=\"{alg}\"><td>{alg}</td><td><code>{}</code>",
            signer["kid"].as_str().unwrap()
        );
        assert!(html.contains(&row), "{alg} signer missing: {html}");
    }
    // Next: the earliest pending activation (both pending keys activate
    // 30 days after the bootstrap; the first in the list is RS384's or
    // ES384's, whichever activates first).
    let next = keys
        .iter()
        .filter(|k| k["state"] == "pending")
        .min_by_key(|k| k["activate_at"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(
        html.contains(&format!(
            "Next: <time>{}</time>: {} starts signing",
            next["activate_at"].as_str().unwrap(),
            next["kid"].as_str().unwrap()
        )),
        "{html}"
    );
    // The audit head is the newest record's. The page was built after the
    // audit call, and reading /status writes no record.
    let newest = &audit.as_array().unwrap()[0];
    let head = format!(
        "<code id=\"audit-head\">{}:{}</code>",
        newest["seq"],
        newest["hash"].as_str().unwrap()
    );
    assert!(html.contains(&head), "{head} not in the page");
    // The timeline of the set, inline, one bar per kid at least.
    let start = html.find("<svg").unwrap();
    let end = html.rfind("</svg>").unwrap() + "</svg>".len();
    let pic = Picture::parse(&html[start..end]);
    for k in keys {
        assert!(
            pic.bars.iter().any(|b| b.kid == k["kid"]),
            "{} not drawn",
            k["kid"]
        );
    }
}
