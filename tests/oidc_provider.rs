//! The token broker against an authorization server nobody here wrote:
//! `oidc-provider` (npm, the version pinned in `tests/oidc/package.json`,
//! installed by `npm ci` in `tests/oidc`, which `.ci/run` does), run by
//! `tests/oidc/server.mjs` on 127.0.0.1. Its clients `app-rs` (RS384) and
//! `app-es` (ES384) authenticate with `private_key_jwt` against the
//! daemon's JWKS URL; `client_credentials` tokens come over the real
//! socket, and the provider's introspection endpoint says they are live.
//!
//! Then the two ways a key changes, and what the provider does:
//! - a scheduled rotation (`keys rotate`: the pending key, published since
//!   the start, activates as early as `publish_ahead` allows): the
//!   provider's cached JWKS already holds the new kid, the next token comes
//!   with no refusal and no JWKS refetch;
//! - `keys rotate --now` (a key published after the provider's fetch signs
//!   at once): the provider refuses the new kid (`invalid_client`; jwksd
//!   answers 502 `token_endpoint_refused`) and does NOT refetch on the
//!   unknown kid while its JWKS is fresh (at least 60 s, oidc-provider's
//!   floor, whatever `Cache-Control` says); once stale, the next attempt
//!   refetches and succeeds. The provider's clock is moved past that minute
//!   with libfaketime (its timers stay real); without libfaketime the test
//!   waits the minute out.
//!
//! The refusals the provider logged all say the kid was unknown to it.
//!
//! Without node or the installed package it prints `SKIPPED: <why>` and
//! passes, except under `CI=true`, where it fails.

mod helpers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const SCOPE: &str = "system/Patient.rs";
/// (oidc-provider client, alg it is pinned to).
const CLIENTS: [(&str, &str); 2] = [("app-rs", "RS384"), ("app-es", "ES384")];

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// `Err(why)` when the provider cannot run here.
fn prerequisites() -> Result<(), String> {
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => return Err("node is not installed (apt-get install nodejs)".into()),
    }
    if !oidc_dir()
        .join("node_modules/oidc-provider/package.json")
        .exists()
    {
        return Err("oidc-provider is not installed (run `npm ci` in tests/oidc)".into());
    }
    Ok(())
}

/// The policy: a 30-day schedule (nothing rotates by itself during the
/// test), keys published 5 s ahead, a 5 s JWKS max-age, and one client per
/// provider client, both allowed [`SCOPE`] at `token_url`.
fn oidc_policy(token_url: &str) -> String {
    let clients: String = CLIENTS
        .iter()
        .map(|(id, _)| {
            format!(
                "[[clients]]\nclient_id = \"{id}\"\naudiences = [\"{token_url}\"]\nscopes = [\"{SCOPE}\", \"system/Observation.rs\"]\n\n"
            )
        })
        .collect();
    format!(
        r#"name = "default"
algorithms = ["RS384", "ES384"]
rsa_bits = 2048
rotate_every = "30d"
publish_ahead = "5s"
grace = "10m"
jwks_max_age = "5s"
assertion_lifetime = "5m"
clock_skew = "1m"

{clients}[[callers]]
uid = {uid}
clients = ["app-rs", "app-es"]
admin = true
"#,
        uid = my_uid()
    )
}

/// `node tests/oidc/server.mjs`, killed on drop.
struct Provider {
    child: Child,
    port: u16,
    /// Its stdout, line by line (`jwks_fetch <url>` per JWKS fetch).
    lines: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
    /// libfaketime's offset file for its clock, if it runs under it.
    clock: Option<PathBuf>,
}

impl Provider {
    fn start(jwks_uri: &str, dir: &Path) -> Provider {
        let stderr = dir.join("oidc-provider.stderr");
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(oidc_dir())
            .env("JWKS_URI", jwks_uri)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let clock = Path::new(LIBFAKETIME).exists().then(|| {
            let offset = dir.join("provider-clock");
            std::fs::write(&offset, "+0\n").unwrap();
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", &offset)
                .env("FAKETIME_NO_CACHE", "1")
                // Its timers (fetch timeouts, ...) stay real.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            offset
        });
        let mut child = cmd.spawn().expect("spawn node");
        let out = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let keep = lines.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("port=") {
                    let _ = tx.send(port.parse::<u16>().unwrap());
                }
                keep.lock().unwrap().push(line);
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "oidc-provider did not start: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        Provider {
            child,
            port,
            lines,
            stderr,
            clock,
        }
    }

    fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// How many times it fetched a client's JWKS so far.
    fn jwks_fetches(&self) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("jwks_fetch "))
            .count()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// RFC 7662 introspection as the resource server `fhir`.
    async fn introspect(&self, token: &str) -> Value {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let basic =
            base64::engine::general_purpose::STANDARD.encode("fhir:fhir-introspection-secret");
        let (status, _, body) = send(
            stream,
            Method::POST,
            "/token/introspection",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &format!("Basic {basic}")),
            ],
            format!("token={token}").into_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST /v1/tokens for a provider client, with its alg.
async fn token(d: &Daemon, token_url: &str, client: &str, alg: &str) -> (StatusCode, Value) {
    let body = json!({"client_id": client, "token_url": token_url, "scope": SCOPE, "alg": alg});
    d.socket_json(Method::POST, "/v1/tokens", Some(body)).await
}

/// DELETE /v1/tokens: the next POST fetches anew.
async fn forget(d: &Daemon, token_url: &str, client: &str) {
    let body = json!({"client_id": client, "token_url": token_url, "scope": SCOPE});
    let (status, _) = d
        .socket_raw(Method::DELETE, "/v1/tokens", body.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// The kid in `state` for `alg`.
async fn kid(d: &Daemon, alg: &str, state: &str) -> String {
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let found: Vec<&Value> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["alg"] == alg && k["state"] == state)
        .collect();
    assert_eq!(found.len(), 1, "one {state} {alg} key: {keys}");
    found[0]["kid"].as_str().unwrap().to_owned()
}

/// A fresh token for each client, signed with `kids[i]`, verified by the
/// provider and live according to its introspection.
async fn fresh_tokens_with(d: &Daemon, p: &Provider, kids: &[String]) {
    let url = p.token_url();
    for ((client, alg), kid) in CLIENTS.iter().zip(kids) {
        forget(d, &url, client).await;
        let (status, answer) = token(d, &url, client, alg).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{client}: {answer}\nprovider: {}",
            p.stderr()
        );
        assert_eq!(answer["cached"], false, "{answer}");
        assert_eq!(answer["kid"], kid.as_str(), "{client}: {answer}");
        assert_eq!(answer["scope"], SCOPE, "{answer}");
        let seen = p.introspect(answer["access_token"].as_str().unwrap()).await;
        assert_eq!(seen["active"], true, "{client}: {seen}");
        assert_eq!(seen["client_id"], *client, "{seen}");
        assert_eq!(seen["scope"], SCOPE, "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_accepts_the_assertions_and_rides_a_scheduled_rotation() {
    if let Err(why) = prerequisites() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the oidc-provider test cannot run with CI=true: {why}");
        }
        eprintln!("SKIPPED: oidc-provider test: {why}");
        return;
    }
    let started = Instant::now();

    // The daemon first (the provider needs its JWKS URL), with a token URL
    // to be replaced once the provider listens.
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &oidc_policy("http://127.0.0.1:9/token"));
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    d.settled().await;
    let p = Provider::start(
        &format!("http://{}/.well-known/jwks.json", d.public),
        tmp.path(),
    );
    let url = p.token_url();
    std::fs::write(tmp.path().join("policies/default.toml"), oidc_policy(&url)).unwrap();
    d.reload();
    wait_for("policy reload", Duration::from_secs(10), || async {
        d.log().contains("policies reloaded")
    })
    .await;

    // 1. Tokens with the first keys; each provider client fetches the
    //    JWKS once, which holds the pending keys too.
    let active: Vec<String> = kids_in(&d, "active").await;
    let pending: Vec<String> = kids_in(&d, "pending").await;
    fresh_tokens_with(&d, &p, &active).await;
    assert_eq!(p.jwks_fetches(), 2, "one JWKS fetch per provider client");
    let first_fetch = Instant::now();
    // A second ask is the cached token: no upstream call.
    let (_, again) = token(&d, &url, "app-rs", "RS384").await;
    assert_eq!(again["cached"], true, "{again}");

    // 2. A scheduled rotation: the pending keys (published since the
    //    start) activate as early as publish_ahead allows.
    let out = d.cli(&["keys", "rotate", "--set", "default"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        "the pending keys to activate",
        Duration::from_secs(20),
        || async { kids_in(&d, "active").await == pending },
    )
    .await;
    let rotated_after = started.elapsed();
    fresh_tokens_with(&d, &p, &pending).await;
    assert_eq!(
        p.jwks_fetches(),
        2,
        "the provider verified the new kids from the JWKS it had cached"
    );

    // 3. rotate --now: the successors (published after the provider's
    //    fetch) sign at once.
    d.settled().await;
    let out = d.cli(&["keys", "rotate", "--set", "default", "--now"]);
    assert!(out.status.success(), "{out:?}");
    let warning = String::from_utf8_lossy(&out.stderr).into_owned();
    // jwksd says how long such a verifier may refuse: from the key's
    // publication, max(jwks_max_age, 60 s): well past the 5 s max-age.
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let untils: Vec<i64> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let until = o["handover"]["caches_may_refuse_until"]
                .as_str()
                .unwrap_or_else(|| panic!("no refusal window in {o}"));
            chrono::DateTime::parse_from_rfc3339(until)
                .unwrap()
                .timestamp()
        })
        .collect();
    let now = chrono::Utc::now().timestamp();
    assert_eq!(untils.len(), 2, "{answer}");
    assert!(
        untils.iter().all(|u| (now + 20..=now + 61).contains(u)),
        "{answer}"
    );
    let now_kids = kids_in(&d, "active").await;
    assert!(now_kids.iter().all(|k| !pending.contains(k)));
    for (client, alg) in CLIENTS {
        forget(&d, &url, client).await;
        // Refused, twice: no refetch on the unknown kid while the cached
        // JWKS is fresh.
        for attempt in 0..2 {
            let (status, answer) = token(&d, &url, client, alg).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{client}: {answer}");
            assert_eq!(answer["error"], "token_endpoint_refused", "{answer}");
            assert_eq!(answer["status"], 401, "{answer}");
            assert_eq!(answer["oauth_error"], "invalid_client", "{answer}");
            eprintln!("{client} after rotate --now, attempt {attempt}: {answer}");
        }
    }
    assert_eq!(
        p.jwks_fetches(),
        2,
        "the provider did not refetch its fresh JWKS on an unknown kid"
    );

    // 4. The provider's cached JWKS goes stale (>= 60 s after its fetch):
    //    the next attempt refetches it and succeeds with the new kids.
    match &p.clock {
        Some(offset) => std::fs::write(offset, "+61\n").unwrap(),
        None => {
            eprintln!("libfaketime not installed: waiting out the provider's 60 s JWKS cache");
            let stale = first_fetch + Duration::from_secs(61);
            tokio::time::sleep(stale.saturating_duration_since(Instant::now())).await;
        }
    }
    fresh_tokens_with(&d, &p, &now_kids).await;
    assert_eq!(
        p.jwks_fetches(),
        4,
        "one refetch per provider client once its JWKS was stale"
    );
    // Its own account: each refusal was the unknown kid, nothing else.
    let refusals: Vec<String> = p
        .stderr()
        .lines()
        .filter(|l| l.starts_with("grant.error"))
        .map(str::to_owned)
        .collect();
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    assert!(
        refusals
            .iter()
            .all(|l| l.contains("invalid_client no applicable key found in the JSON Web Key Set")),
        "{refusals:?}"
    );
    eprintln!(
        "scheduled rotation done after {rotated_after:?}; test took {:?}; rotate --now said: {warning}",
        started.elapsed()
    );
}

/// The kids in `state`, in [`CLIENTS`] order.
async fn kids_in(d: &Daemon, state: &str) -> Vec<String> {
    let mut v = Vec::new();
    for (_, alg) in CLIENTS {
        v.push(kid(d, alg, state).await);
    }
    v
}
