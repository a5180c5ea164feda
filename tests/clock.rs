//! Clock trouble end to end: the daemon's wall clock jumps by hours (through
//! libfaketime, with boottime left real) and no key activates or retires
//! early, and assertions keep a true `exp`. Skipped with a message where
//! libfaketime is not installed (`.ci/run` installs it).

mod helpers;

use std::path::Path;
use std::time::Duration;

use helpers::*;
use hyper::Method;
use serde_json::Value;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A rotation due in one hour: a wall clock 6 h ahead would make it due.
fn hourly_policy() -> String {
    policy("")
        .replace("rotate_every = \"30d\"", "rotate_every = \"1h\"")
        .replace("publish_ahead = \"2d\"", "publish_ahead = \"10m\"")
        .replace("jwks_max_age = \"1h\"", "jwks_max_age = \"1m\"")
        .replace("grace = \"7d\"", "grace = \"10m\"")
}

fn states(keys: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn check_exp(d: &Daemon, what: &str) {
    let answer = d.assertion("ES384").await;
    let (_, claims, _, _) = decode_jwt(answer["assertion"].as_str().unwrap());
    let real_now = chrono::Utc::now().timestamp();
    let iat = claims["iat"].as_i64().unwrap();
    assert!(
        (iat - real_now).abs() <= 5,
        "{what}: iat {iat} is not the real now {real_now}"
    );
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 300, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jumping_hours_activates_nothing_early_and_keeps_exp_true() {
    if !Path::new(LIBFAKETIME).exists() {
        eprintln!(
            "SKIPPED clock jump test: {LIBFAKETIME} is not installed (Debian package faketime)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    write_files(&dir, &hourly_policy());
    let offset = dir.join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_s = offset.display().to_string();
    let d = Daemon::spawn_in_with_env(
        &dir,
        &[],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &offset_s),
            ("FAKETIME_NO_CACHE", "1"),
            // Boottime (the guard's reference) stays real, as it would
            // when only the wall clock is wrong.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    d.ready().await;
    let settled = d.settled().await;
    let before = states(&Value::Array(settled));
    check_exp(&d, "before any jump").await;

    for jump in ["+6h", "-6h", "+0"] {
        std::fs::write(&offset, format!("{jump}\n")).unwrap();
        // Several ticks (2 s each) with the jumped clock.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
        assert_eq!(
            states(&keys),
            before,
            "wall clock {jump}: a key changed state"
        );
        check_exp(&d, &format!("wall clock {jump}")).await;
    }
    assert!(d.log().contains("wall clock jumped"), "the jump is logged");
}
