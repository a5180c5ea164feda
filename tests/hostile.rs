//! Hostile input on the signing socket and in the config parsers: a
//! proptest fuzzer against a real daemon (arbitrary methods, paths, bodies,
//! JSON shapes and raw bytes), a fuzzer of `Policy::from_toml` and
//! `Config::from_toml`, and targeted cases (oversized and chunked bodies,
//! invalid UTF-8, slowloris, 2000 idle connections, request smuggling).
//! Slowloris and the connection bound are checked on the plain public and
//! the admin listener too.
//! The README's "Hostile input" table lists what each input gets.
//!
//! `PROPTEST_CASES` overrides the 256 cases per fuzzer.

mod helpers;

use std::path::Path;
use std::time::{Duration, Instant};

use helpers::*;
use hyper::{Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED: [u16; 7] = [200, 400, 403, 404, 413, 429, 503];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

/// A daemon whose `[server]` section gets `server_extra`, started by
/// `start` (`Daemon::start_in` or `Daemon::spawn_in`).
fn start_with_server(
    server_extra: &str,
    start: fn(&Path) -> Daemon,
) -> (tempfile::TempDir, Daemon) {
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy(""));
    let cfg = tmp.path().join("jwksd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen("[server]\n", &format!("[server]\n{server_extra}\n"), 1),
    )
    .unwrap();
    let d = start(tmp.path());
    (tmp, d)
}

/// The error shape: `{"error": code, "message": text}` and nothing else.
fn assert_error_shape(status: StatusCode, body: &[u8], what: &str) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: {status} answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let obj = v.as_object().unwrap_or_else(|| panic!("{what}: {v}"));
    assert!(
        obj.len() == 2 && obj["error"].is_string() && obj["message"].is_string(),
        "{what}: not the error shape: {v}"
    );
}

/// Writes `bytes` on a fresh connection and reads until the daemon closes
/// it or `within` passes. Returns what was read and whether it was closed.
async fn raw(socket: &Path, bytes: &[u8], within: Duration) -> (String, bool) {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status lines in `answer`: one per response.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A JSON value of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from(AUD)),
        Just(Value::from("app")),
        Just(Value::from("default")),
        Just(Value::from("RS384")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("client_id".to_owned()),
                    Just("audience".to_owned()),
                    Just("alg".to_owned()),
                    Just("set".to_owned()),
                    Just("lifetime_s".to_owned()),
                    Just("kid".to_owned()),
                    Just("now".to_owned()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/assertions".to_owned()),
        Just("/v1/keys".to_owned()),
        Just("/v1/admin/revoke".to_owned()),
        Just("/v1/audit".to_owned()),
        Just("/v1/audit/verify".to_owned()),
        "/v1/audit\\?limit=[-a-z0-9%]{0,12}",
        "/[a-zA-Z0-9/._%~-]{0,40}",
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        // A valid request with one field mangled.
        json_value().prop_map(|v| json!({"client_id": "app", "audience": AUD, "alg": v})
            .to_string()
            .into_bytes()),
        (1usize..20_000).prop_map(|n| vec![b'{'; n]),
    ]
}

#[test]
fn fuzz_socket_api_answers_only_allowed_statuses_in_the_error_shape() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Daemon::start(&policy(""));
    rt.block_on(d.ready());
    let mut runner = TestRunner::new(PtConfig {
        cases: cases(),
        failure_persistence: None,
        ..PtConfig::default()
    });
    let started = Instant::now();
    let strategy = (method(), path(), body());
    runner
        .run(&strategy, |(method, path, body)| {
            let what = format!("{method} {path} ({} body bytes)", body.len());
            let head = method == Method::HEAD;
            let (status, answer) = rt
                .block_on(socket_try(
                    &d.socket,
                    method,
                    &path,
                    body,
                    Duration::from_secs(20),
                ))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            prop_assert!(
                ALLOWED.contains(&status.as_u16()),
                "{what}: status {status}: {:?}",
                String::from_utf8_lossy(&answer)
            );
            if status != StatusCode::OK && !head {
                assert_error_shape(status, &answer, &what);
            }
            Ok(())
        })
        .unwrap();
    // Raw bytes straight onto the socket: an HTTP answer or a closed
    // connection, never a hang or a crash.
    let mut runner = TestRunner::new(PtConfig {
        cases: cases(),
        failure_persistence: None,
        ..PtConfig::default()
    });
    let raw_bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (prop::collection::vec(any::<u8>(), 0..200)).prop_map(|tail| {
            let mut b = b"POST /v1/assertions HTTP/1.1\r\nHost: x\r\n".to_vec();
            b.extend(tail);
            b
        }),
    ];
    runner
        .run(&raw_bytes, |bytes| {
            let (answer, _closed) = rt.block_on(raw(&d.socket, &bytes, Duration::from_millis(300)));
            for s in statuses(&answer) {
                prop_assert!(ALLOWED.contains(&s), "status {s} for {bytes:?}: {answer}");
            }
            Ok(())
        })
        .unwrap();
    // Still serving.
    rt.block_on(async {
        assert!(verify_with_jwks(
            d.assertion("ES384").await["assertion"].as_str().unwrap(),
            &serde_json::from_slice(&d.jwks().await.2).unwrap()
        ));
    });
    eprintln!(
        "socket fuzz: {} structured + {} raw cases in {:.1} s; daemon still signs",
        cases(),
        cases(),
        started.elapsed().as_secs_f64()
    );
}

/// Valid texts to mutate.
const POLICY: &str = r#"name = "default"
algorithms = ["RS384", "ES384"]
rsa_bits = 2048
rotate = "0 0 3 1 * *"
timezone = "Europe/Paris"
publish_ahead = "2d"
grace = "7d"
jwks_max_age = "1h"
assertion_lifetime = "5m"
clock_skew = "1m"

[[clients]]
client_id = "app"
audiences = ["https://ehr.example.com/oauth2/token"]
jku = true

[[callers]]
uid = 1001
clients = ["app"]
admin = false
max_concurrent = 8
max_per_second = 100
max_queued = 16
queue_timeout = "5s"
"#;

const CONFIG: &str = r#"[server]
listen = "127.0.0.1:8080"
public_url = "https://keys.example.com"
admin_listen = "127.0.0.1:9090"
socket = "/run/jwksd/jwksd.sock"
socket_mode = "0660"
max_connections = 1024
max_connections_per_uid = 128
header_timeout = "30s"
request_timeout = "30s"

[store]
url = "sqlite:///var/lib/jwksd/jwksd.db"
audit_retention = "400d"

[seal]
master_key_file = "/etc/jwksd/master.key"

[policies]
dir = "/etc/jwksd/policies"
"#;

/// Random edits of `text`: cut, insert odd characters or numbers, repeat or
/// drop a line.
fn mutated(text: &'static str) -> impl Strategy<Value = String> {
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), 0usize..20).prop_map(|(i, n)| (0u8, i, n, String::new())),
        (any::<prop::sample::Index>(), ".{0,8}").prop_map(|(i, s)| (1u8, i, 0, s)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                Just("-1".to_owned()),
                Just("99999999999999999999".to_owned()),
                Just("0".to_owned()),
                Just("\"\"".to_owned()),
                Just("[]".to_owned()),
                Just("\"999999999w\"".to_owned()),
                Just("\"0 0 0 31 2 *\"".to_owned()),
                Just("\u{0}".to_owned()),
                Just("=".to_owned()),
                Just("\n[[callers]]\n".to_owned()),
            ]
        )
            .prop_map(|(i, s)| (1u8, i, 0, s)),
        any::<prop::sample::Index>().prop_map(|i| (2u8, i, 0, String::new())),
    ];
    prop::collection::vec(edit, 1..6).prop_map(move |edits| {
        let mut t: Vec<char> = text.chars().collect();
        for (kind, at, n, s) in edits {
            let i = at.index(t.len() + 1);
            match kind {
                0 => {
                    let end = (i + n).min(t.len());
                    t.drain(i..end);
                }
                1 => {
                    t.splice(i..i, s.chars());
                }
                _ => {
                    // Repeat the line around `i`.
                    let s: String = t.iter().collect();
                    let start = s[..s.char_indices().nth(i).map_or(s.len(), |c| c.0)]
                        .rfind('\n')
                        .map_or(0, |p| p + 1);
                    let line: String = s[start..].lines().next().unwrap_or("").to_owned();
                    let pos = s[..start].chars().count();
                    t.splice(pos..pos, format!("{line}\n").chars());
                }
            }
        }
        t.into_iter().collect()
    })
}

#[test]
fn fuzz_policy_and_config_parsers_never_panic() {
    use jwksd::config::Config;
    use jwksd::config::policy::Policy;
    assert!(Policy::from_toml(Path::new("p.toml"), POLICY).is_ok());
    assert!(Config::from_toml(Path::new("/etc/jwksd/jwksd.toml"), CONFIG).is_ok());
    let config = PtConfig {
        cases: cases(),
        failure_persistence: None,
        ..PtConfig::default()
    };
    let mut runner = TestRunner::new(config.clone());
    runner
        .run(&prop_oneof![mutated(POLICY), ".{0,300}"], |text| {
            let _ = Policy::from_toml(Path::new("p.toml"), &text);
            Ok(())
        })
        .unwrap();
    let mut runner = TestRunner::new(config);
    runner
        .run(&prop_oneof![mutated(CONFIG), ".{0,300}"], |text| {
            let _ = Config::from_toml(Path::new("/etc/jwksd/jwksd.toml"), &text);
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_hostile_requests_get_clear_refusals() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    let post = |body: &[u8], extra: &str| {
        let mut b =
            format!("POST /v1/assertions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
                .into_bytes();
        b.extend_from_slice(body);
        b
    };
    let good = json!({"client_id": "app", "audience": AUD}).to_string();
    let t = Duration::from_secs(10);

    // Malformed JSON, wrong shapes, invalid UTF-8: 400 in the error shape.
    for body in [
        b"{\"client_id\": \"app\",".to_vec(),
        b"[]".to_vec(),
        b"{\"client_id\": 7, \"audience\": \"x\"}".to_vec(),
        b"{\"client_id\": \"app\", \"audience\": \"x\", \"extra\": 1}".to_vec(),
        b"{\"client_id\": \"\xff\xfe\", \"audience\": \"x\"}".to_vec(),
        b"\xc3\x28\xa0\xa1".to_vec(),
    ] {
        let (s, b) = d.socket_raw(Method::POST, "/v1/assertions", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_error_shape(s, &b, "malformed");
    }
    // A bad query string and a wrong method: the error shape too (these
    // were axum's plain-text 400 and bare 405 before).
    let (s, b) = d
        .socket_raw(Method::GET, "/v1/audit?limit=abc", vec![])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error_shape(s, &b, "bad query");
    let (s, b) = d.socket_raw(Method::DELETE, "/v1/keys", vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error_shape(s, &b, "wrong method");
    // 17 KiB: 413, with and without Content-Length (chunked).
    let big = vec![b' '; 17 * 1024];
    let (s, b) = d
        .socket_raw(Method::POST, "/v1/assertions", big.clone())
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(s, &b, "17 KiB");
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend(&big);
    chunked.extend(b"\r\n0\r\n\r\n");
    let (a, _) = raw(
        &d.socket,
        &post(&chunked, "Transfer-Encoding: chunked\r\n"),
        t,
    )
    .await;
    assert_eq!(statuses(&a), [413], "{a}");
    // A small chunked body with no Content-Length is read and signed.
    let small = format!("{:x}\r\n{good}\r\n0\r\n\r\n", good.len());
    let (a, _) = raw(
        &d.socket,
        &post(small.as_bytes(), "Transfer-Encoding: chunked\r\n"),
        t,
    )
    .await;
    assert_eq!(statuses(&a), [200], "{a}");
    // No Content-Length, no chunking: an empty body, 400.
    let (a, _) = raw(&d.socket, &post(b"", ""), t).await;
    assert_eq!(statuses(&a), [400], "{a}");
    // Content types do not matter: the body is JSON or refused.
    for ct in ["text/plain", "application/x-www-form-urlencoded", "\u{1}"] {
        let extra = format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", good.len());
        let (a, _) = raw(&d.socket, &post(good.as_bytes(), &extra), t).await;
        let s = statuses(&a);
        assert!(s == [200] || s == [400], "{ct}: {a}");
    }
    let form = "client_id=app&audience=x";
    let extra = format!(
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        form.len()
    );
    let (a, _) = raw(&d.socket, &post(form.as_bytes(), &extra), t).await;
    assert_eq!(statuses(&a), [400], "{a}");
    // Invalid UTF-8 in the path and in a header.
    let (a, _) = raw(
        &d.socket,
        b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        t,
    )
    .await;
    assert!(statuses(&a).iter().all(|s| *s == 400 || *s == 404), "{a}");
    let (a, _) = raw(
        &d.socket,
        b"GET /v1/keys HTTP/1.1\r\nHost: x\r\nX-A: \xff\xfe\r\nConnection: close\r\n\r\n",
        t,
    )
    .await;
    assert!(statuses(&a).iter().all(|s| *s == 200 || *s == 400), "{a}");

    // Smuggling shapes: refused or one request at most; the request hidden
    // in the body is never processed.
    let smuggled = "GET /v1/audit/verify HTTP/1.1\r\nHost: x\r\n\r\n";
    let cl_te = format!(
        "POST /v1/assertions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let dup_cl = format!(
        "POST /v1/assertions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nContent-Length: 0\r\n\r\n{good}{smuggled}",
        good.len()
    );
    let te_cl = format!(
        "POST /v1/assertions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let te_obfuscated = format!(
        "POST /v1/assertions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\n{{}}\n{smuggled}"
    );
    let obs_fold = format!(
        "POST /v1/assertions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n\r\n{smuggled}"
    );
    let before = audit_verifications(&d).await;
    let mut seen = Vec::new();
    for (name, req) in [
        ("CL+TE", cl_te),
        ("duplicate CL", dup_cl),
        ("TE+CL", te_cl),
        ("TE xchunked", te_obfuscated),
        ("obs-fold", obs_fold),
    ] {
        let (a, closed) = raw(&d.socket, req.as_bytes(), Duration::from_secs(5)).await;
        let s = statuses(&a);
        assert!(s.len() <= 1, "{name}: two requests from one: {a}");
        assert!(closed, "{name}: connection left open");
        assert!(s.iter().all(|s| *s == 400), "{name}: {a}");
        seen.push(format!("{name}: {s:?}"));
    }
    assert_eq!(
        audit_verifications(&d).await,
        before + 1,
        "a smuggled request was processed"
    );
    eprintln!("smuggling shapes: {seen:?}");
    // Still serving.
    d.assertion("RS384").await;
}

/// How many `audit verify` requests the audit trail holds (each one is
/// audited); counting itself adds one.
async fn audit_verifications(d: &Daemon) -> usize {
    let (s, v) = d
        .socket_json(Method::GET, "/v1/audit?limit=100000", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "audit")
        .count()
}

/// Sends `request`'s header lines byte by byte on `s`, never ending them,
/// and calls `served` every fifth byte (it must succeed meanwhile). Returns
/// how long the daemon took to cut the connection; fails after 15 s.
async fn slowloris<S, F, Fut>(mut s: S, request: &[u8], mut served: F) -> Duration
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    for (n, b) in request.iter().cycle().enumerate() {
        if s.write_all(&[*b]).await.is_err() {
            return started.elapsed();
        }
        // The daemon closing the connection shows up as EOF on read.
        let mut buf = [0u8; 256];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            let _ = r;
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never cut");
        // Meanwhile a normal caller is served.
        if n.is_multiple_of(5) {
            served().await;
        }
    }
    unreachable!("the request cycles forever")
}

/// A slowloris cut by `header_timeout = "2s"`: not before, not long after.
fn assert_cut_by_a_2s_header_timeout(what: &str, cut_after: Duration) {
    eprintln!("{what}: slowloris cut after {cut_after:?} (header_timeout 2s)");
    assert!(
        cut_after >= Duration::from_millis(1500) && cut_after < Duration::from_secs(6),
        "{what}: {cut_after:?}"
    );
}

/// Header lines for the TCP listeners, never ended.
const SLOW_GET: &[u8] = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_by_the_header_timeout_while_others_are_served() {
    let (_tmp, d) = start_with_server("header_timeout = \"2s\"", Daemon::start_in);
    d.ready().await;
    let s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let request = b"POST /v1/assertions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let cut_after = slowloris(s, request, || async {
        d.assertion("ES384").await;
    })
    .await;
    assert_cut_by_a_2s_header_timeout("socket", cut_after);
    d.assertion("RS384").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_public_listener_is_cut_by_the_header_timeout_while_jwks_is_served() {
    let (_tmp, d) = start_with_server("header_timeout = \"2s\"", Daemon::start_in);
    d.ready().await;
    let s = tokio::net::TcpStream::connect(d.public).await.unwrap();
    let cut_after = slowloris(s, SLOW_GET, || async {
        assert_eq!(d.jwks().await.0, StatusCode::OK);
    })
    .await;
    assert_cut_by_a_2s_header_timeout("public listener", cut_after);
    assert_eq!(d.jwks().await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_admin_listener_is_cut_by_the_header_timeout_while_healthz_is_served() {
    let (_tmp, d) = start_with_server("header_timeout = \"2s\"", Daemon::start_in);
    d.ready().await;
    let healthz = || async {
        let (status, _, _) = http(d.admin, Method::GET, "/healthz", &[]).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    };
    let s = tokio::net::TcpStream::connect(d.admin).await.unwrap();
    let cut_after = slowloris(s, SLOW_GET, healthz).await;
    assert_cut_by_a_2s_header_timeout("admin listener", cut_after);
    healthz().await;
}

/// With `max_connections = 3`: three idle connections to `addr` keep a
/// fourth `GET path` unanswered while the socket still signs (each listener
/// has its own bound); once one of the three closes, the fourth is answered.
async fn assert_three_idle_connections_hold_off_a_fourth(
    d: &Daemon,
    addr: std::net::SocketAddr,
    path: &'static str,
) {
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let fourth = tokio::spawn(http(addr, Method::GET, path, &[]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !fourth.is_finished(),
        "{path} answered while three connections were open: {:?}",
        fourth
            .await
            .map(|answer| answer.map(|(status, _, _)| status))
    );
    d.assertion("ES384").await;
    drop(idle.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .unwrap_or_else(|_| panic!("{path} not answered after a connection closed"))
        .unwrap();
    assert_eq!(answer.unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_idle_connections_hold_off_a_fourth_on_the_public_listener_until_one_closes() {
    let (_tmp, d) = start_with_server("max_connections = 3", Daemon::start_in);
    d.ready().await;
    assert_three_idle_connections_hold_off_a_fourth(&d, d.public, "/.well-known/jwks.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_idle_connections_hold_off_a_fourth_on_the_admin_listener_until_one_closes() {
    let (_tmp, d) = start_with_server("max_connections = 3", Daemon::start_in);
    d.ready().await;
    assert_three_idle_connections_hold_off_a_fourth(&d, d.admin, "/healthz").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_stop_a_normal_request() {
    // Room for 2000 sockets here and in the daemon (inherited).
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < 5000 {
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(10_000),
            hard,
        )
        .unwrap();
    }
    // Spawned: the daemon's 2000 descriptors count against a limit of its
    // own, not against the one this process's 2000 count against.
    // All from this test's uid: its own bound goes up with the listener's
    // (one uid over `max_connections_per_uid` is tested in admission.rs).
    let (_tmp, d) = start_with_server(
        "max_connections = 3000\nmax_connections_per_uid = 3000",
        Daemon::spawn_in,
    );
    d.ready().await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(tokio::net::UnixStream::connect(&d.socket).await.unwrap());
    }
    // Half of them start a request and stall.
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"GET /v1/keys HTTP/1.1\r\n").await.unwrap();
    }
    let t = Instant::now();
    let answer = d.assertion("ES384").await;
    let latency = t.elapsed();
    eprintln!("2000 idle connections open; a signature took {latency:?}");
    assert!(answer["assertion"].is_string());
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    let (status, _, _) = d.jwks().await;
    assert_eq!(status, StatusCode::OK);
    drop(idle);
    d.assertion("RS384").await;
}
