//! Load: 500 concurrent socket clients sign for 60 s while the scheduler
//! rotates both algorithms every 5 s. No request may fail (a 429 counts as
//! a failure: the caller's max_concurrent is 1000), and every assertion
//! verifies against the JWKS fetched right after it was issued.
//!
//! `JWKSD_LOAD_SECONDS` and `JWKSD_LOAD_CLIENTS` override 60 and 500.

mod helpers;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helpers::*;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Distinct JWKS documents, so that 10^4 pairs do not hold 10^4 copies.
#[derive(Default)]
struct Collected {
    jwks: HashMap<Bytes, usize>,
    docs: Vec<Bytes>,
    pairs: Vec<(String, usize)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_sign_through_rotations_without_a_failure() {
    let seconds = env_or("JWKSD_LOAD_SECONDS", 60);
    let clients = env_or("JWKSD_LOAD_CLIENTS", 500) as usize;
    let policy = policy("max_concurrent = 1000\n")
        .replace("rotate_every = \"30d\"", "rotate_every = \"5s\"")
        .replace("publish_ahead = \"2d\"", "publish_ahead = \"2s\"")
        .replace("jwks_max_age = \"1h\"", "jwks_max_age = \"1s\"")
        .replace("assertion_lifetime = \"5m\"", "assertion_lifetime = \"1m\"")
        .replace("clock_skew = \"1m\"", "clock_skew = \"10s\"")
        // >= assertion_lifetime + jwks_max_age + clock_skew = 1m11s
        .replace("grace = \"7d\"", "grace = \"2m\"");
    // Spawned: 500 connections on each side; in one process both sides
    // would share one RLIMIT_NOFILE (1024 by default on many systems).
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy);
    // All clients are this test's uid: its connection bound must hold them,
    // with room for connections still closing while their client reconnects.
    let cfg = tmp.path().join("jwksd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let bound = format!(
        "[server]\nmax_connections_per_uid = {}\n",
        (2 * clients).clamp(1, 1024)
    );
    std::fs::write(&cfg, text.replacen("[server]\n", &bound, 1)).unwrap();
    let d = Daemon::spawn_in(tmp.path());
    d.ready().await;
    d.settled().await;

    let collected = Arc::new(Mutex::new(Collected::default()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (socket, public) = (d.socket.clone(), d.public);
        let (collected, failures) = (collected.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let alg = if c % 2 == 0 { "RS384" } else { "ES384" };
            let body = json!({"client_id": "app", "audience": AUD, "alg": alg}).to_string();
            while Instant::now() < until {
                let answer = socket_try(
                    &socket,
                    Method::POST,
                    "/v1/assertions",
                    body.clone().into_bytes(),
                    Duration::from_secs(60),
                )
                .await;
                let jwt = match answer {
                    Ok((StatusCode::OK, b)) => {
                        let v: Value = serde_json::from_slice(&b).unwrap();
                        v["assertion"].as_str().unwrap().to_owned()
                    }
                    Ok((s, b)) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{s}: {}", String::from_utf8_lossy(&b)));
                        continue;
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        continue;
                    }
                };
                let jwks = match http(public, Method::GET, "/.well-known/jwks.json", &[]).await {
                    Ok((StatusCode::OK, _, b)) => b,
                    other => {
                        failures.lock().unwrap().push(format!("JWKS: {other:?}"));
                        continue;
                    }
                };
                let mut c = collected.lock().unwrap();
                let n = c.docs.len();
                let idx = *c.jwks.entry(jwks.clone()).or_insert(n);
                if idx == n {
                    c.docs.push(jwks);
                }
                c.pairs.push((jwt, idx));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let failures = failures.lock().unwrap().clone();
    let c = std::mem::take(&mut *collected.lock().unwrap());

    // Verify every pair; count the signing keys seen per alg.
    let docs: Vec<Value> = c
        .docs
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    // Each pair: the kid is in the JWKS fetched after the assertion (with
    // the same alg), and the signature verifies with that JWK (aws-lc-rs,
    // fast); one pair in 50 also with the RustCrypto verify_with_jwks,
    // which takes milliseconds unoptimised. On both cores.
    let doc_keys: Vec<HashMap<String, Value>> = docs
        .iter()
        .map(|d| {
            d["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| (k["kid"].as_str().unwrap().to_owned(), k.clone()))
                .collect()
        })
        .collect();
    let mut kids: HashMap<String, HashSet<String>> = HashMap::new();
    for (jwt, _) in &c.pairs {
        let (header, _, _, _) = decode_jwt(jwt);
        kids.entry(header["alg"].as_str().unwrap().to_owned())
            .or_default()
            .insert(header["kid"].as_str().unwrap().to_owned());
    }
    let verify_started = Instant::now();
    let bad: Vec<String> = std::thread::scope(|s| {
        let parts: Vec<_> = c
            .pairs
            .chunks(c.pairs.len().div_ceil(2).max(1))
            .map(|chunk| {
                let (doc_keys, docs) = (&doc_keys, &docs);
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for (i, (jwt, idx)) in chunk.iter().enumerate() {
                        let (header, claims, _, _) = decode_jwt(jwt);
                        let ok = doc_keys[*idx]
                            .get(header["kid"].as_str().unwrap())
                            .is_some_and(|k| {
                                verify_with_jwk_fast(jwt, k)
                                    && (i % 50 != 0 || verify_with_jwks(jwt, &docs[*idx]))
                            });
                        if !ok {
                            bad.push(format!("{header} {claims}"));
                        }
                    }
                    bad
                })
            })
            .collect();
        parts.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "load: {} pairs verified in {:.1} s",
        c.pairs.len(),
        verify_started.elapsed().as_secs_f64()
    );
    let rotations: usize = kids.values().map(|k| k.len().saturating_sub(1)).sum();
    eprintln!(
        "load: {clients} clients, {:.1} s: {} assertions ({:.0}/s), {} failures, {} not verifiable; {} distinct JWKS served; signing kids RS384 {}, ES384 {} ({rotations} rotations seen)",
        elapsed.as_secs_f64(),
        c.pairs.len(),
        c.pairs.len() as f64 / elapsed.as_secs_f64(),
        failures.len(),
        bad.len(),
        c.docs.len(),
        kids.get("RS384").map_or(0, HashSet::len),
        kids.get("ES384").map_or(0, HashSet::len),
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        bad.is_empty(),
        "{} assertions do not verify against the JWKS fetched after them, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    // "Through rotations" needs rotations during the load: at least one per
    // alg per 30 s. Not the schedule's cadence (one per 5 s): successors are
    // generated under SCHED_IDLE (workers/background.rs), so that signing
    // keeps the CPU, and 500 closed-loop clients keep both cores busy; key
    // generation gets the leftovers. On a 2-core machine without AVX-512 that
    // is a rotation per 12-15 s (4 and 5 signing keys per alg in 60 s, before
    // and after the restructuring of issue 14), where the per-10-s bound this
    // replaced failed both times. The cadence itself is tested on a simulated
    // clock (tests/lifecycle.rs).
    let want = (seconds / 30).max(1) as usize;
    for alg in ["RS384", "ES384"] {
        let n = kids.get(alg).map_or(0, HashSet::len);
        assert!(n > want, "{alg}: only {n} signing keys in {seconds} s");
    }
}
