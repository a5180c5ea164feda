//! Caller isolation: two peer uids on one socket. Caller A (this test
//! process, root) floods far beyond its `max_concurrent` + `max_queued` and
//! `max_per_second`; caller B (uid 65534, a `curl --unix-socket` child)
//! is served every time with bounded latency. A's refusals are 429s that
//! name the limit, and they are audited. Needs root (to run B as another
//! uid): prints SKIPPED otherwise.

mod helpers;

use std::os::unix::process::CommandExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const B_UID: u32 = 65534;
const FLOODERS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_caller_does_not_starve_another() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED caller isolation: needs root to run a second caller uid");
        return;
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED caller isolation: curl is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // B must reach the socket inside the test directory.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let extra = format!(
        "max_concurrent = 4\nmax_queued = 8\nmax_per_second = 40\n\n[[callers]]\nuid = {B_UID}\nclients = [\"other-app\"]\nmax_concurrent = 4\n"
    );
    write_files(tmp.path(), &policy(&extra));
    let cfg = tmp.path().join("jwksd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // The config refuses a world-writable socket ("0666"); B reaches it
    // through the socket's group instead.
    let Some(group) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(B_UID))
        .ok()
        .flatten()
    else {
        eprintln!("SKIPPED caller isolation: no group {B_UID}");
        return;
    };
    std::fs::write(
        &cfg,
        text.replacen(
            "[server]\n",
            &format!(
                "[server]\nsocket_mode = \"0660\"\nsocket_group = {:?}\n",
                group.name
            ),
            1,
        ),
    )
    .unwrap();
    let d = Daemon::start_in(tmp.path());
    d.ready().await;

    // A floods for a few seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, concurrent, rate, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let body = json!({"client_id": "app", "audience": AUD, "alg": "RS384"}).to_string();
    let mut flood = Vec::new();
    for _ in 0..FLOODERS {
        let (socket, stop, body) = (d.socket.clone(), stop.clone(), body.clone());
        let (ok, concurrent, rate, other) =
            (ok.clone(), concurrent.clone(), rate.clone(), other.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, answer) = socket_try(
                    &socket,
                    Method::POST,
                    "/v1/assertions",
                    body.clone().into_bytes(),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
                match status {
                    StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    StatusCode::TOO_MANY_REQUESTS => {
                        let v: Value = serde_json::from_slice(&answer).unwrap();
                        let m = v["message"].as_str().unwrap();
                        if m.contains("max_concurrent") {
                            concurrent.fetch_add(1, Ordering::Relaxed)
                        } else if m.contains("max_per_second") {
                            rate.fetch_add(1, Ordering::Relaxed)
                        } else {
                            panic!("429 naming no limit: {m}")
                        }
                    }
                    s => {
                        other.fetch_add(1, Ordering::Relaxed);
                        panic!("flood got {s}: {}", String::from_utf8_lossy(&answer))
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // B, as uid 65534, meanwhile: every request succeeds, quickly.
    let socket = d.socket.clone();
    let b = tokio::task::spawn_blocking(move || {
        let body = json!({"client_id": "other-app", "audience": AUD}).to_string();
        let mut latencies = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let out = std::process::Command::new("curl")
                .args(["-s", "-w", "\n%{http_code}", "--max-time", "10"])
                .arg("--unix-socket")
                .arg(&socket)
                .args(["-H", "content-type: application/json", "-d", &body])
                .arg("http://localhost/v1/assertions")
                .uid(B_UID)
                .gid(B_UID)
                .output()
                .unwrap();
            latencies.push(t.elapsed());
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (answer, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
            assert_eq!(code, "200", "caller B refused: {answer}");
            let v: Value = serde_json::from_str(answer).unwrap();
            assert!(v["assertion"].is_string());
            std::thread::sleep(Duration::from_millis(100));
        }
        latencies
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let worst = b.iter().max().unwrap();
    let (ok, concurrent, rate) = (
        ok.load(Ordering::Relaxed),
        concurrent.load(Ordering::Relaxed),
        rate.load(Ordering::Relaxed),
    );
    eprintln!(
        "isolation: A ({FLOODERS} concurrent) got {ok} signatures, {concurrent} 429 max_concurrent, {rate} 429 max_per_second; B {}/{} ok, worst latency {worst:?} (curl start included)",
        b.len(),
        b.len()
    );
    assert!(concurrent > 0, "A was never refused for max_concurrent");
    assert!(rate > 0, "A was never refused for max_per_second");
    assert!(*worst < Duration::from_secs(2), "B waited {worst:?}");

    // A's refusals are audited, with the limit named: one record each up
    // to A's budget of refusal records, the rest counted.
    let (status, records) = d
        .socket_json(Method::GET, "/v1/audit?limit=100000", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let refused: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "too_many_requests" && r["uid"] == my_uid())
        .collect();
    let named = |what: &str| {
        refused
            .iter()
            .filter(|r| r["detail"].as_str().is_some_and(|d| d.contains(what)))
            .count() as u64
    };
    assert!(named("max_concurrent") > 0 && named("max_per_second") > 0);
    assert_eq!(
        named("max_concurrent") + named("max_per_second"),
        refused.len() as u64
    );
    let suppressed = metric(
        &d,
        "jwksd_audit_refusals_suppressed_total{why=\"uid_budget\"}",
    )
    .await
    .unwrap();
    assert_eq!(refused.len() as u64 + suppressed as u64, concurrent + rate);
    let b_ok = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["uid"] == B_UID && r["outcome"] == "ok")
        .count();
    assert_eq!(b_ok, 20);
}
