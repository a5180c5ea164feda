//! The token broker end to end (DESIGN §6): the daemon in this process,
//! real requests on its socket, and a token endpoint written here (axum on
//! 127.0.0.1) that checks every assertion against the daemon's JWKS with
//! an independent verifier (`verify_with_jwks`), `iss`/`sub`/`aud`/`exp`,
//! and refuses a replayed `jti`, then issues short-lived tokens.

mod helpers;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const SCOPES: &str = r#"scopes = ["system/Patient.rs", "system/Observation.rs"]"#;

/// What the endpoint answers next.
#[derive(Clone, Debug)]
enum Mode {
    /// A token living this many seconds, with the scope asked for.
    Grant(u64),
    /// A token, but for more scopes than asked.
    Broader,
    /// Status, headers and body as given.
    Raw(u16, Vec<(&'static str, String)>, String),
    /// Nothing for this long, then a token.
    Slow(Duration),
}

#[derive(Default)]
struct Endpoint {
    jwks_from: OnceLock<SocketAddr>,
    url: OnceLock<String>,
    mode: Mutex<Option<Mode>>,
    calls: AtomicUsize,
    /// Assertions that passed every check.
    verified: AtomicUsize,
    /// Why assertions were refused.
    refused: Mutex<Vec<String>>,
    seen_jti: Mutex<HashSet<String>>,
    /// Every token handed out, to grep for.
    issued: Mutex<Vec<String>>,
    /// Delay before answering (to pile requests up).
    delay: Mutex<Duration>,
}

impl Endpoint {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = Some(mode);
    }
}

fn decode_form(body: &str) -> std::collections::HashMap<String, String> {
    fn dec(s: &str) -> String {
        let b = s.replace('+', " ");
        let bytes = b.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(&b[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
    body.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .collect()
}

/// Checks the assertion like a real authorization server; `Err` is why not.
async fn check_assertion(
    ep: &Endpoint,
    form: &std::collections::HashMap<String, String>,
) -> Result<(), String> {
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return Err("grant_type".into());
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err("client_assertion_type".into());
    }
    let jwt = form.get("client_assertion").ok_or("no assertion")?;
    let addr = *ep.jwks_from.get().ok_or("no JWKS yet")?;
    let (_, _, body) = http(addr, Method::GET, "/.well-known/jwks.json", &[]).await?;
    let jwks: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if !verify_with_jwks(jwt, &jwks) {
        return Err("signature".into());
    }
    let (_, claims, _, _) = decode_jwt(jwt);
    if claims["iss"] != "app" || claims["sub"] != "app" {
        return Err(format!("iss/sub {claims}"));
    }
    if claims["aud"].as_str() != ep.url.get().map(String::as_str) {
        return Err(format!("aud {claims}"));
    }
    let now = chrono::Utc::now().timestamp();
    if claims["exp"].as_i64().unwrap_or(0) <= now || claims["exp"].as_i64().unwrap() > now + 300 {
        return Err(format!("exp {claims}"));
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
    if !ep.seen_jti.lock().unwrap().insert(jti) {
        return Err("jti replayed".into());
    }
    Ok(())
}

async fn token_endpoint(State(ep): State<Arc<Endpoint>>, body: String) -> Response {
    let n = ep.calls.fetch_add(1, Ordering::SeqCst);
    let delay = *ep.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let form = decode_form(&body);
    if let Err(why) = check_assertion(&ep, &form).await {
        ep.refused.lock().unwrap().push(why.clone());
        return (
            AxumStatus::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": why})),
        )
            .into_response();
    }
    ep.verified.fetch_add(1, Ordering::SeqCst);
    let mode = ep.mode.lock().unwrap().clone().unwrap_or(Mode::Grant(3600));
    let scope = form.get("scope").cloned().unwrap_or_default();
    let token = format!("at-{n}-{}", Rng::new("token").next());
    match mode {
        Mode::Grant(expires_in) => {
            ep.issued.lock().unwrap().push(token.clone());
            axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in, "scope": scope}))
                .into_response()
        }
        Mode::Broader => {
            ep.issued.lock().unwrap().push(token.clone());
            axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "system/Patient.rs system/Observation.rs system/*.*"}))
                .into_response()
        }
        Mode::Raw(status, headers, body) => {
            let mut map = AxumHeaders::new();
            for (k, v) in headers {
                map.insert(k, v.parse().unwrap());
            }
            (AxumStatus::from_u16(status).unwrap(), map, body).into_response()
        }
        Mode::Slow(pause) => {
            // Longer than the daemon's [tokens] timeout; the slow drip of
            // an answer is tested in tokens::upstream.
            tokio::time::sleep(pause).await;
            axum::Json(json!({"access_token": "late", "token_type": "Bearer", "expires_in": 60}))
                .into_response()
        }
    }
}

struct Broker {
    ep: Arc<Endpoint>,
    d: Daemon,
    url: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _tmp: tempfile::TempDir,
}

/// A token endpoint, then a daemon whose client `app` may ask it for
/// [`SCOPES`]; `client_extra` goes into that client, `caller_extra` into
/// the test's `[[callers]]` entry.
async fn broker(client_extra: &str, caller_extra: &str) -> Broker {
    let ep = Arc::new(Endpoint::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    ep.url.set(url.clone()).unwrap();
    let app = axum::Router::new()
        .route("/token", axum::routing::post(token_endpoint))
        .with_state(ep.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let policy = policy(caller_extra).replace(AUD, &url).replace(
        "jku = true",
        &format!("jku = true\n{SCOPES}\n{client_extra}"),
    );
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy);
    let config = tmp.path().join("jwksd.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[tokens]\nconnect_timeout = \"1s\"\ntimeout = \"1s\"\n");
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    ep.jwks_from.set(d.public).unwrap();
    Broker {
        ep,
        d,
        url,
        server,
        _tmp: tmp,
    }
}

impl Broker {
    async fn token(&self, scope: &str, min_ttl_s: Option<u64>) -> (StatusCode, Value) {
        let mut body = json!({"client_id": "app", "token_url": self.url, "scope": scope});
        if let Some(m) = min_ttl_s {
            body["min_ttl_s"] = m.into();
        }
        self.d
            .socket_json(Method::POST, "/v1/tokens", Some(body))
            .await
    }

    async fn forget(&self, scope: &str) -> StatusCode {
        let body = json!({"client_id": "app", "token_url": self.url, "scope": scope});
        self.d
            .socket_raw(Method::DELETE, "/v1/tokens", body.to_string().into_bytes())
            .await
            .0
    }

    /// Waits until the endpoint has been called `n` times and has answered.
    async fn calls_reach(&self, n: usize) {
        wait_for(
            &format!("{n} upstream calls"),
            Duration::from_secs(10),
            || async { self.ep.calls() >= n },
        )
        .await;
        // The refresh settles right after the endpoint answers.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Nothing the daemon wrote or answers holds a token the endpoint issued.
    async fn assert_no_token_anywhere(&self) {
        let issued = self.ep.issued.lock().unwrap().clone();
        assert!(!issued.is_empty());
        let mut places = vec![("daemon.log".to_owned(), self.d.log())];
        for f in ["jwksd.db", "jwksd.db-wal", "audit-spool.jsonl"] {
            if let Ok(bytes) = std::fs::read(self.d.dir.join(f)) {
                places.push((f.to_owned(), String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        let (_, audit) = self
            .d
            .socket_json(Method::GET, "/v1/audit?limit=1000", None)
            .await;
        places.push(("audit".into(), audit.to_string()));
        let (_, _, metrics) = http(self.d.admin, Method::GET, "/metrics", &[])
            .await
            .unwrap();
        places.push((
            "metrics".into(),
            String::from_utf8_lossy(&metrics).into_owned(),
        ));
        for (place, text) in &places {
            for t in &issued {
                assert!(!text.contains(t.as_str()), "token {t} found in {place}");
            }
        }
        // The upstream calls are audited, though, and every assertion that
        // went upstream was recorded before it left (same jti, earlier seq).
        assert!(
            audit.to_string().contains("\"action\":\"token\""),
            "{audit}"
        );
        let records = audit.as_array().unwrap();
        for call in records
            .iter()
            .filter(|r| r["action"] == "token" && r["jti"].is_string())
        {
            assert!(
                records.iter().any(|r| r["action"] == "token_assertion"
                    && r["jti"] == call["jti"]
                    && r["seq"].as_i64() < call["seq"].as_i64()),
                "no record before the assertion of {call} left"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_fetched_once_served_from_the_cache_and_refreshed_ahead() {
    let b = broker("", "").await;
    let (status, first) = b.token("system/Patient.rs", None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["cached"], false);
    assert_eq!(first["scope"], "system/Patient.rs");
    assert!(
        first["kid"]
            .as_str()
            .unwrap()
            .starts_with("default-rs384-v"),
        "{first}"
    );
    let now = chrono::Utc::now().timestamp();
    let expires_at = first["expires_at"].as_i64().unwrap();
    assert!((now + 3590..=now + 3601).contains(&expires_at), "{first}");
    assert_eq!(
        b.ep.verified.load(Ordering::SeqCst),
        1,
        "{:?}",
        b.ep.refused.lock().unwrap()
    );

    let (_, second) = b.token("system/Patient.rs", None).await;
    assert_eq!(second["cached"], true);
    assert_eq!(second["access_token"], first["access_token"]);
    assert_eq!(b.ep.calls(), 1);

    // DELETE drops it: the next request fetches anew. Who forced that is
    // on record.
    assert_eq!(b.forget("system/Patient.rs").await, StatusCode::NO_CONTENT);
    let (_, audit) =
        b.d.socket_json(Method::GET, "/v1/audit?limit=1000", None)
            .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "token_forget" && r["outcome"] == "ok"),
        "{audit}"
    );
    let (_, third) = b.token("system/Patient.rs", None).await;
    assert_eq!(third["cached"], false);
    assert_ne!(third["access_token"], first["access_token"]);
    assert_eq!(b.ep.calls(), 2);

    // A token with 50 s left is past its refresh point (60 s): it is still
    // handed out, and refreshed behind the caller's back.
    b.ep.set(Mode::Grant(50));
    let (_, short) = b.token("system/Observation.rs", None).await;
    assert_eq!((short["cached"].clone(), b.ep.calls()), (json!(false), 3));
    b.ep.set(Mode::Grant(3600));
    let (_, again) = b.token("system/Observation.rs", None).await;
    assert_eq!(again["access_token"], short["access_token"]);
    assert_eq!(again["cached"], true);
    b.calls_reach(4).await;
    let (_, refreshed) = b.token("system/Observation.rs", None).await;
    assert_eq!(refreshed["cached"], true);
    assert_ne!(
        refreshed["access_token"], short["access_token"],
        "the refresh replaced it"
    );

    // min_ttl_s more than a cached token has left: the caller waits for a
    // fresh one.
    b.ep.set(Mode::Grant(50));
    b.forget("system/Observation.rs").await;
    b.token("system/Observation.rs", None).await;
    let calls = b.ep.calls();
    let (status, fresh) = b.token("system/Observation.rs", Some(55)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{fresh}");
    assert!(
        fresh["message"]
            .as_str()
            .unwrap()
            .contains("min_ttl_s = 55"),
        "{fresh}"
    );
    assert!(b.ep.calls() > calls);

    // The scopes sorted are one key: the order asked in does not matter.
    b.ep.set(Mode::Grant(3600));
    let (_, ab) = b
        .token("system/Patient.rs system/Observation.rs", None)
        .await;
    let (_, ba) = b
        .token("system/Observation.rs  system/Patient.rs", None)
        .await;
    assert_eq!(ab["access_token"], ba["access_token"]);
    assert_eq!(ba["cached"], true);

    // `jwksd token` prints the token alone.
    let out = b.d.cli(&[
        "token",
        "--client-id",
        "app",
        "--token-url",
        &b.url,
        "--scope",
        "system/Patient.rs system/Observation.rs",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", ab["access_token"].as_str().unwrap())
    );

    // Every assertion the endpoint saw passed its checks (signature against
    // the JWKS, iss/sub/aud/exp, a fresh jti).
    assert!(
        b.ep.refused.lock().unwrap().is_empty(),
        "{:?}",
        b.ep.refused.lock().unwrap()
    );
    b.assert_no_token_anywhere().await;
    let hits = metric(
        &b.d,
        "jwksd_token_cache_total{client=\"app\",result=\"hit\"}",
    )
    .await;
    assert!(hits.unwrap_or(0.0) >= 3.0, "{hits:?}");
    let refreshes = metric(
        &b.d,
        "jwksd_token_cache_total{client=\"app\",result=\"refresh\"}",
    )
    .await;
    assert!(refreshes.unwrap_or(0.0) >= 1.0, "{refreshes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_first_requests_make_one_upstream_call() {
    let b = Arc::new(broker("", "max_concurrent = 2000").await);
    *b.ep.delay.lock().unwrap() = Duration::from_millis(500);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                let body =
                    json!({"client_id": "app", "token_url": b.url, "scope": "system/Patient.rs"});
                socket_try(
                    &b.d.socket,
                    Method::POST,
                    "/v1/tokens",
                    body.to_string().into_bytes(),
                    Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    let mut tokens = HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        tokens.insert(v["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(b.ep.calls(), 1);
    assert_eq!(tokens.len(), 1, "every caller got the one token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gets_no_token_for_a_client_or_scope_it_is_not_allowed_nor_a_broader_one() {
    let b = broker("", "").await;
    let ask = |client: &str, url: &str, scope: &str| json!({"client_id": client, "token_url": url, "scope": scope});
    for (body, status, says) in [
        (
            ask("app", &b.url, "system/*.*"),
            StatusCode::FORBIDDEN,
            "scope \"system/*.*\" is not allowed",
        ),
        (
            ask("app", &b.url, "system/Patient.rs user/x"),
            StatusCode::FORBIDDEN,
            "scope \"user/x\" is not allowed",
        ),
        (
            ask("other-app", &b.url, "system/Patient.rs"),
            StatusCode::FORBIDDEN,
            "not allowed for this caller",
        ),
        (
            ask(
                "app",
                "https://ehr.example.com/oauth2/token",
                "system/Patient.rs",
            ),
            StatusCode::FORBIDDEN,
            "audience",
        ),
        (
            ask("app", &b.url, ""),
            StatusCode::BAD_REQUEST,
            "scope: must name at least one scope",
        ),
        (
            ask("app", &b.url, "a\\b"),
            StatusCode::BAD_REQUEST,
            "not a scope token",
        ),
        (
            json!({"client_id": "app", "token_url": b.url, "scope": "system/Patient.rs", "min_ttl_s": 100000}),
            StatusCode::BAD_REQUEST,
            "min_ttl_s = 100000",
        ),
        (
            json!({"client_id": "app", "token_url": b.url, "scope": "system/Patient.rs", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ] {
        let (got, answer) =
            b.d.socket_json(Method::POST, "/v1/tokens", Some(body.clone()))
                .await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{body} -> {answer}"
        );
    }
    assert_eq!(
        b.ep.calls(),
        0,
        "a refused request never reaches the endpoint"
    );
    let (got, answer) =
        b.d.socket_json(
            Method::DELETE,
            "/v1/tokens",
            Some(ask("other-app", &b.url, "system/Patient.rs")),
        )
        .await;
    assert_eq!(got, StatusCode::FORBIDDEN, "{answer}");

    // An endpoint that grants more than asked: the token is not handed out.
    b.ep.set(Mode::Broader);
    let (got, answer) = b.token("system/Patient.rs", None).await;
    assert_eq!(got, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"], "token_endpoint_refused");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("not asked for"),
        "{answer}"
    );
    assert!(answer.get("access_token").is_none());
    b.assert_no_token_anywhere().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_the_rate_cap_stop_upstream_calls() {
    let b = broker("token_requests_per_minute = 3", "").await;
    b.ep.set(Mode::Raw(
        429,
        vec![
            ("retry-after", "120".into()),
            ("content-type", "application/json".into()),
        ],
        r#"{"error":"temporarily_unavailable","error_description":"slow down"}"#.into(),
    ));
    let (status, answer) = b.token("system/Patient.rs", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["status"], 429);
    assert_eq!(answer["oauth_error"], "temporarily_unavailable");
    assert_eq!(answer["oauth_error_description"], "slow down");
    for _ in 0..3 {
        let (status, answer) = b.token("system/Patient.rs", None).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
        assert_eq!(answer["status"], 429, "{answer}");
    }
    assert_eq!(b.ep.calls(), 1, "no upstream call while Retry-After runs");

    // The rate cap counts per (client, token_url), across scope sets.
    b.ep.set(Mode::Grant(3600));
    for scope in [
        "system/Observation.rs",
        "system/Observation.rs system/Patient.rs",
    ] {
        let (status, answer) = b.token(scope, None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(b.ep.calls(), 3);
    b.forget("system/Observation.rs").await;
    let (status, answer) = b.token("system/Observation.rs", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("token_requests_per_minute (3)"),
        "{answer}"
    );
    assert_eq!(b.ep.calls(), 3);
    // A cached token is still served.
    let (status, _) = b
        .token("system/Patient.rs system/Observation.rs", None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_slow_or_lying_endpoint_gives_the_documented_errors_and_a_valid_token_is_still_served()
 {
    let mut b = broker("", "").await;
    b.ep.set(Mode::Grant(50));
    let (_, good) = b.token("system/Patient.rs", Some(10)).await;
    let mut cases: Vec<(Mode, StatusCode, Value, &str)> = vec![
        (
            Mode::Raw(
                500,
                vec![("content-type", "text/html".into())],
                "<html><body>Internal error</body></html>".into(),
            ),
            StatusCode::BAD_GATEWAY,
            json!(500),
            "an HTML page",
        ),
        (
            Mode::Raw(200, vec![], "{\"access_token\": \"x\"".into()),
            StatusCode::BAD_GATEWAY,
            json!(200),
            "not a JSON object",
        ),
        (
            Mode::Raw(
                200,
                vec![("content-type", "application/json".into())],
                "{\"token_type\":\"Bearer\",\"expires_in\":60}".into(),
            ),
            StatusCode::BAD_GATEWAY,
            json!(200),
            "access_token is missing",
        ),
        (
            Mode::Raw(
                200,
                vec![],
                format!("{{\"access_token\":\"{}\"}}", "x".repeat(70_000)),
            ),
            StatusCode::BAD_GATEWAY,
            json!(200),
            "larger than 65536",
        ),
        (
            Mode::Raw(
                400,
                vec![("content-type", "application/json".into())],
                r#"{"error":"invalid_client","error_description":"unknown kid"}"#.into(),
            ),
            StatusCode::BAD_GATEWAY,
            json!(400),
            "invalid_client",
        ),
        (
            Mode::Raw(
                302,
                vec![("location", "https://elsewhere.example/token".into())],
                String::new(),
            ),
            StatusCode::BAD_GATEWAY,
            json!(302),
            "redirect",
        ),
    ];
    // Last: its background refresh takes the whole timeout.
    cases.push((
        Mode::Slow(Duration::from_secs(3)),
        StatusCode::GATEWAY_TIMEOUT,
        Value::Null,
        "did not answer within 1s",
    ));
    for (mode, status, upstream, says) in cases {
        let before = b.ep.calls();
        b.ep.set(mode.clone());
        // Needs more than the cached token has: the endpoint is asked.
        let (got, answer) = b.token("system/Patient.rs", Some(55)).await;
        assert_eq!(got, status, "{mode:?} -> {answer}");
        assert_eq!(answer["status"], upstream, "{mode:?} -> {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{mode:?} -> {answer}"
        );
        // A caller content with what is cached still gets it.
        let (got, cached) = b.token("system/Patient.rs", Some(10)).await;
        assert_eq!(got, StatusCode::OK, "{mode:?} -> {cached}");
        assert_eq!(cached["access_token"], good["access_token"]);
        // That request set off a refresh (the token is past its refresh
        // point); the next case must not wait on it.
        b.calls_reach(before + 2).await;
    }
    wait_for(
        "the slow refresh to time out",
        Duration::from_secs(10),
        || async {
            metric(
                &b.d,
                "jwksd_token_upstream_errors_total{client=\"app\",error=\"timeout\"}",
            )
            .await
                >= Some(2.0)
        },
    )
    .await;
    // A dead endpoint: nothing listens any more.
    b.server.abort();
    let _ = (&mut b.server).await;
    let (got, answer) = b.token("system/Patient.rs", Some(55)).await;
    assert_eq!(got, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["status"], Value::Null, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the token endpoint"),
        "{answer}"
    );
    let (got, cached) = b.token("system/Patient.rs", Some(10)).await;
    assert_eq!(got, StatusCode::OK, "{cached}");
    assert_eq!(cached["access_token"], good["access_token"]);
    let invalid_client = metric(
        &b.d,
        "jwksd_token_upstream_errors_total{client=\"app\",error=\"invalid_client\"}",
    )
    .await;
    assert!(
        invalid_client.unwrap_or(0.0) >= 1.0,
        "{invalid_client:?} {answer}"
    );
    b.assert_no_token_anywhere().await;
}
