//! Admission on the signing socket: who may hold a connection, for how
//! long, and how a caller's burst waits. A peer that no policy lists is
//! refused before its body is read; a body that does not come is cut at
//! `server.request_timeout`; one uid holds `server.max_connections_per_uid`
//! connections at most; a caller's excess waits in its own bounded queue
//! (`[[callers]] max_queued`, `queue_timeout`), never in another's; every
//! client gets an HTTP answer, also when it is answered before it finished
//! sending its request. The README's "Hostile input" table lists these.
//!
//! Callers other than this test process (root) connect as other uids
//! through `helpers::connect_as`; those tests need root and print SKIPPED
//! otherwise.

mod helpers;

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

/// A uid no policy lists.
const UNLISTED: u32 = 4242;
/// A uid listed for `other-app` (see `OTHER_CALLER`).
const OTHER: u32 = 4243;
/// The `[[callers]]` entry of `OTHER`.
const OTHER_CALLER: &str = "\n[[callers]]\nuid = 4243\nclients = [\"other-app\"]\n";

fn root_or_skip(what: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED {what}: needs root to connect as other uids");
    }
    root
}

/// A daemon in this process with `server_extra` in `[server]` and
/// `caller_extra` after this process's `[[callers]]` entry (see
/// `helpers::policy`), whose socket other uids reach through group 0 (the
/// socket's group is the daemon's, root's; its directory is opened to it).
fn start(server_extra: &str, caller_extra: &str) -> (tempfile::TempDir, Daemon) {
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy(caller_extra));
    let cfg = tmp.path().join("jwksd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen("[server]\n", &format!("[server]\n{server_extra}\n"), 1),
    )
    .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let d = Daemon::start_in(tmp.path());
    (tmp, d)
}

/// The body of a signature request for `client`.
fn sign_body(client: &str) -> Vec<u8> {
    json!({"client_id": client, "audience": AUD, "alg": "ES384"})
        .to_string()
        .into_bytes()
}

/// The head of `method path` announcing a body of `len` bytes.
fn head(method: &str, path: &str, len: usize) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// One HTTP/1.1 answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    /// The value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

/// Reads one answer (framed by Content-Length) from `s`; an I/O error or
/// an early EOF is what a client sees when it gets no answer.
async fn read_answer(s: &mut UnixStream) -> io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body =
                    serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                return Ok(Answer { status, head, body });
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before a whole answer: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection of this process that sent the head of a signature request
/// and holds its body back (admitted or queued on the head alone).
async fn holding(d: &Daemon) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(&head("POST", "/v1/assertions", sign_body("app").len()))
        .await
        .unwrap();
    s
}

/// Sends the held-back body on `s` and reads the answer.
async fn release(mut s: UnixStream) -> Answer {
    s.write_all(&sign_body("app")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), read_answer(&mut s))
        .await
        .expect("no answer after the body")
        .unwrap()
}

/// Lets the daemon act on heads just written before anything else is
/// sent: the outcome does not depend on it, only which requests got in
/// first.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// A signature request of this process (`client` "app") on a fresh
/// connection.
async fn sign(d: &Daemon, within: Duration) -> Result<(StatusCode, hyper::body::Bytes), String> {
    socket_try(
        &d.socket,
        Method::POST,
        "/v1/assertions",
        sign_body("app"),
        within,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_peer_is_refused_on_every_route_without_its_body_being_waited_for() {
    if !root_or_skip("unlisted peer") {
        return;
    }
    // request_timeout stays 30 s: an answer within 10 s did not wait for
    // the body.
    let (_tmp, d) = start("", "");
    d.ready().await;
    let routes = [
        ("POST", "/v1/assertions"),
        ("POST", "/v1/admin/rotate"),
        ("POST", "/v1/admin/revoke"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/audit/verify"),
        ("GET", "/v1/audit/head"),
        ("GET", "/v1/keys/timeline"),
        ("POST", "/v1/tokens"),
        ("DELETE", "/v1/tokens"),
    ];
    for (method, path) in routes {
        let mut s = connect_as(&d.socket, UNLISTED, 0).unwrap();
        // The head announces a body that never comes.
        s.write_all(&head(method, path, 100)).await.unwrap();
        let a = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut s))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer; the daemon waits for the body"))
            .unwrap();
        assert_eq!(a.status, 403, "{method} {path}: {a:?}");
        assert_eq!(a.body["error"], "forbidden", "{method} {path}: {a:?}");
    }
    // Audited as refusals, as before.
    let (status, records) = d
        .socket_json(Method::GET, "/v1/audit?limit=1000", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let refused: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["uid"] == UNLISTED && r["outcome"] == "forbidden")
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(refused.len(), routes.len(), "{refused:?}");
    assert!(refused.contains(&"sign"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_of_an_unlisted_and_of_a_listed_peer_do_not_stop_a_listed_caller() {
    if !root_or_skip("stalled bodies") {
        return;
    }
    // The reviewer's setup: 4 connections in all on the socket.
    let (_tmp, d) = start(
        "max_connections = 4\nmax_connections_per_uid = 2\nrequest_timeout = \"2s\"",
        OTHER_CALLER,
    );
    d.ready().await;
    let stalled_at = Instant::now();
    // As many stalled bodies as the socket has connections, from a peer no
    // policy lists, then from a listed one.
    let mut stalled = Vec::new();
    for uid in [UNLISTED, OTHER] {
        for _ in 0..4 {
            let mut s = connect_as(&d.socket, uid, 0).unwrap();
            s.write_all(&head("POST", "/v1/assertions", 100))
                .await
                .unwrap();
            stalled.push((uid, s));
        }
    }
    // Meanwhile the listed caller gets its signatures.
    for _ in 0..3 {
        let (status, body) = sign(&d, Duration::from_secs(20))
            .await
            .expect("a listed caller got no signature while others stalled their bodies");
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    // What the stalled connections got: every one an answer.
    let mut cut = 0;
    for (uid, mut s) in stalled {
        let a = tokio::time::timeout(Duration::from_secs(20), read_answer(&mut s))
            .await
            .expect("a stalled connection was never answered")
            .unwrap_or_else(|e| panic!("uid {uid}: no answer: {e}"));
        match (uid, a.status) {
            // Over its uid's bound.
            (_, 503) => assert!(
                a.message().contains("server.max_connections_per_uid"),
                "{a:?}"
            ),
            (UNLISTED, 403) => {}
            (OTHER, 408) => {
                // Cut at the deadline, not before.
                assert!(a.message().contains("server.request_timeout"), "{a:?}");
                assert!(stalled_at.elapsed() >= Duration::from_millis(1900));
                cut += 1;
            }
            _ => panic!("uid {uid}: {a:?}"),
        }
    }
    assert!(
        cut > 0,
        "no stalled body of the listed peer was cut at the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_simultaneous_requests_of_a_default_caller_are_all_served() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    // 32 requests in flight at once, over the default max_concurrent of
    // 16: the heads first (each request is admitted or queued on its
    // head), the bodies once the daemon has seen every head.
    let mut conns = Vec::new();
    for _ in 0..32 {
        conns.push(holding(&d).await);
    }
    settle().await;
    let answers = futures_join(conns.into_iter().map(release).collect()).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// Runs `futures` concurrently, in order of their results.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_excess_queues_behind_itself_only_and_beyond_its_queue_gets_429_with_retry_after()
{
    if !root_or_skip("fair queue") {
        return;
    }
    let (_tmp, d) = start(
        "",
        &format!("max_concurrent = 2\nmax_queued = 2\nqueue_timeout = \"1m\"\n{OTHER_CALLER}"),
    );
    d.ready().await;
    // Caller A (this process): its two slots held by bodies held back...
    let slots = vec![holding(&d).await, holding(&d).await];
    settle().await;
    // ...two whole requests in its queue...
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let socket = d.socket.clone();
            tokio::spawn(async move {
                socket_try(
                    &socket,
                    Method::POST,
                    "/v1/assertions",
                    sign_body("app"),
                    Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    settle().await;
    // ...and one more: refused at once, with Retry-After, naming the limits.
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(&head("POST", "/v1/assertions", sign_body("app").len()))
        .await
        .unwrap();
    s.write_all(&sign_body("app")).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut s))
        .await
        .expect("no 429 for a request over the queue")
        .unwrap();
    assert_eq!(a.status, 429, "{a:?}");
    assert!(a.message().contains("callers.max_queued"), "{a:?}");
    let retry: u64 = a
        .header("retry-after")
        .expect("429 without Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "{a:?}");

    // Caller B, another uid, is served while A's queue still waits: B
    // never queues behind A.
    for _ in 0..3 {
        let mut s = connect_as(&d.socket, OTHER, 0).unwrap();
        let body = sign_body("other-app");
        s.write_all(&head("POST", "/v1/assertions", body.len()))
            .await
            .unwrap();
        s.write_all(&body).await.unwrap();
        let a = tokio::time::timeout(Duration::from_secs(20), read_answer(&mut s))
            .await
            .expect("caller B waited behind caller A")
            .unwrap();
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert!(
        queued.iter().all(|q| !q.is_finished()),
        "A's queued requests finished while its slots were held"
    );

    // A's slots free: the held requests and then the queued ones are served.
    for s in slots {
        assert_eq!(release(s).await.status, 200);
    }
    for q in queued {
        let (status, body) = q.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_refused_with_429_after_queue_timeout_and_so_is_a_rate_excess() {
    let d = Daemon::start(&policy(
        "max_concurrent = 1\nmax_queued = 1\nqueue_timeout = \"1s\"\nmax_per_second = 1000\n",
    ));
    d.ready().await;
    let slot = holding(&d).await;
    settle().await;
    let waited = Instant::now();
    let (status, body) = sign(&d, Duration::from_secs(20)).await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("callers.queue_timeout"),
        "{v}"
    );
    assert!(
        waited.elapsed() >= Duration::from_millis(900),
        "{:?}",
        waited.elapsed()
    );
    assert_eq!(release(slot).await.status, 200);

    // The rate limit's 429 carries Retry-After too.
    let d = Daemon::start(&policy("max_per_second = 1\n"));
    d.ready().await;
    let mut refused = None;
    for _ in 0..3 {
        let s = UnixStream::connect(&d.socket).await.unwrap();
        let (status, headers, body) =
            send(s, Method::POST, "/v1/assertions", &[], sign_body("app"))
                .await
                .unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((headers, body));
            break;
        }
    }
    let (headers, body) = refused.expect("3 requests at once never went over 1 per second");
    assert!(
        String::from_utf8_lossy(&body).contains("max_per_second"),
        "{body:?}"
    );
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_answered_before_it_sent_its_body_can_still_send_it_and_reads_the_answer() {
    let (_tmp, d) = start(
        "max_connections_per_uid = 3",
        "max_concurrent = 1\nmax_queued = 0\n",
    );
    d.ready().await;
    let slot = holding(&d).await;
    settle().await;
    // Over max_concurrent with no queue: 429 on the head alone.
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    let body = sign_body("app");
    s.write_all(&head("POST", "/v1/assertions", body.len()))
        .await
        .unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut s))
        .await
        .expect("no early 429")
        .unwrap();
    assert_eq!(a.status, 429, "{a:?}");
    // The client now sends the body it had not sent yet, as a client that
    // writes its whole request before reading does; a daemon that closed
    // the connection outright made this EPIPE (and a read ECONNRESET).
    for part in body.chunks(body.len().div_ceil(3)) {
        s.write_all(part)
            .await
            .expect("the body could not be sent after the early answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(0))),
        "not a clean close after the answer: {end:?}"
    );

    // Over the uid's connection bound (the slot's connection, and one
    // idle more, are two of three): 503 with Retry-After, read as cleanly.
    let idle = UnixStream::connect(&d.socket).await.unwrap();
    let also_idle = UnixStream::connect(&d.socket).await.unwrap();
    settle().await;
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(&head("POST", "/v1/assertions", body.len()))
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
    let a = read_answer(&mut s).await.unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    assert!(
        a.message().contains("server.max_connections_per_uid"),
        "{a:?}"
    );
    assert!(a.header("retry-after").is_some(), "{a:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(0))), "{end:?}");
    drop((idle, also_idle));
    assert_eq!(release(slot).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_one_request_connections_of_one_uid_over_its_limits_all_get_an_http_answer() {
    let (_tmp, d) = start(
        "max_connections_per_uid = 24",
        "max_concurrent = 2\nmax_queued = 1\nqueue_timeout = \"1s\"\n",
    );
    d.ready().await;
    const CLIENTS: usize = 32;
    const EACH: usize = 8;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let socket = d.socket.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..EACH {
                    // One connection per request; head and body in two
                    // writes a moment apart, as many clients send them (a
                    // head answered in between is what the load test hit).
                    let outcome = async {
                        let mut s = UnixStream::connect(&socket).await?;
                        // RS384: slow enough (milliseconds) to go over
                        // max_concurrent, cheap enough for 256 of them.
                        let body = json!({"client_id": "app", "audience": AUD, "alg": "RS384"})
                            .to_string()
                            .into_bytes();
                        s.write_all(&head("POST", "/v1/assertions", body.len()))
                            .await?;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        s.write_all(&body).await?;
                        read_answer(&mut s).await
                    };
                    seen.push(
                        match tokio::time::timeout(Duration::from_secs(30), outcome).await {
                            Ok(Ok(a)) => Ok(a.status),
                            Ok(Err(e)) => Err(format!("{:?}: {e}", e.kind())),
                            Err(_) => Err("no answer within 30 s".to_owned()),
                        },
                    );
                }
                seen
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut failures = Vec::new();
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(s) => *statuses.entry(s).or_default() += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    eprintln!(
        "{CLIENTS} clients x {EACH} one-request connections in {:?}: {statuses:?}, {} without an answer",
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        statuses.keys().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.get(&200).is_some_and(|n| *n > 0), "{statuses:?}");
    assert!(
        statuses.keys().any(|s| *s != 200),
        "never over the limits: {statuses:?}"
    );
}
