//! End-to-end tests of the core path on the embedded default (SQLite):
//! the real daemon (in this process, or the binary where a test needs a
//! process), a real HTTP listener on 127.0.0.1, the real Unix socket, real
//! files.

mod helpers;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

fn jwks_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

async fn started() -> Daemon {
    Daemon::start(&policy("")).when_settled().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs384_and_es384_assertions_verify_against_the_served_jwks_with_independent_crates() {
    let d = started().await;
    let (status, _, body) = d.jwks().await;
    assert_eq!(status, StatusCode::OK);
    let jwks = jwks_json(&body);
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    for alg in ["RS384", "ES384"] {
        let answer = d.assertion(alg).await;
        let jwt = answer["assertion"].as_str().unwrap();
        assert!(
            verify_with_jwks(jwt, &jwks),
            "{alg} assertion does not verify"
        );
        let (header, claims, sig, _) = decode_jwt(jwt);
        // Header: exactly alg, kid, typ and (policy jku = true) jku.
        let mut names: Vec<&String> = header.as_object().unwrap().keys().collect();
        names.sort();
        assert_eq!(names, ["alg", "jku", "kid", "typ"]);
        assert_eq!(header["alg"], alg);
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["jku"], "http://127.0.0.1:8080/.well-known/jwks.json");
        let active = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["alg"] == alg && k["state"] == "active")
            .unwrap();
        assert_eq!(header["kid"], active["kid"], "signed by the active key");
        assert_eq!(answer["kid"], header["kid"]);
        assert_eq!(answer["alg"], alg);
        assert_eq!(
            answer["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        // Claims of SMART App Launch 2.2.
        assert_eq!(claims["iss"], "app");
        assert_eq!(claims["sub"], "app");
        assert_eq!(claims["aud"], AUD);
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, 300);
        let now = chrono::Utc::now().timestamp();
        assert!((iat - now).abs() < 60, "iat {iat} is not now {now}");
        assert_eq!(answer["expires_at"], exp);
        assert_eq!(answer["jti"], claims["jti"]);
        assert!(
            claims["jti"].as_str().unwrap().len() >= 22,
            "jti under 128 bits"
        );
        if alg == "ES384" {
            assert_eq!(sig.len(), 96, "ES384 signature must be r||s, never DER");
        } else {
            assert_eq!(sig.len(), 256, "RSA-2048 signature length");
        }
        // A changed payload must not verify: the check can fail.
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged_claims = json!({"iss": "app", "sub": "app", "aud": "https://evil.example/token", "exp": exp, "iat": iat, "jti": claims["jti"]});
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                forged_claims.to_string()
            ),
            parts[2]
        );
        assert!(
            !verify_with_jwks(&forged, &jwks),
            "forged {alg} assertion verified"
        );
    }
}

/// `workers` concurrent callers, each asking for `each` assertions in turn,
/// the algorithm picked by `alg(worker, i)`; every answer, in no order.
async fn sign_concurrently(
    d: &Arc<Daemon>,
    workers: usize,
    each: usize,
    alg: fn(usize, usize) -> &'static str,
) -> Vec<Value> {
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..each {
                answers.push(d.assertion(alg(worker, i)).await);
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_assertions_have_a_thousand_distinct_jtis() {
    let d = Arc::new(started().await);
    let all: Vec<String> = sign_concurrently(&d, 10, 100, |worker, i| {
        if (worker + i) % 10 == 0 {
            "RS384"
        } else {
            "ES384"
        }
    })
    .await
    .iter()
    .map(|a| a["jti"].as_str().unwrap().to_owned())
    .collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 1000);
    assert_eq!(distinct.len(), 1000);
}

/// The audit records of the answered assertions, read from the SQLite
/// file on a connection of our own (not through the daemon, whose own
/// `GET /v1/audit` record would end the writer's hold first).
fn stored_sign_records(d: &Daemon) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open_with_flags(
        d.dir.join("jwksd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut q = db
        .prepare("SELECT jti, outcome, kid FROM audit WHERE action = 'sign' ORDER BY seq")
        .unwrap();
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// RS384 records are handed to the audit writer before the signature is
/// made, and held there to share a commit with the signatures queued
/// behind them: each answer must still find its own record durable when it
/// arrives, once, with its kid, however the requests interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_assertion_answered_is_in_the_audit_chain_once_with_its_kid() {
    let d = Arc::new(started().await);
    // One at a time: nothing else reaches the writer, so only the answer's
    // own wait can have made its record durable.
    for _ in 0..8 {
        let a = d.assertion("RS384").await;
        let jti = a["jti"].as_str().unwrap();
        let stored: Vec<_> = stored_sign_records(&d)
            .into_iter()
            .filter(|(j, _, _)| j == jti)
            .collect();
        assert_eq!(stored.len(), 1, "jti {jti} not durable at its answer");
        assert_eq!(stored[0].1, "ok");
        assert_eq!(stored[0].2, a["kid"].as_str().unwrap());
    }
    // Concurrent, both algorithms mixed.
    let answers: Vec<(String, String)> = sign_concurrently(&d, 8, 12, |worker, i| {
        if (worker + i) % 3 == 0 {
            "ES384"
        } else {
            "RS384"
        }
    })
    .await
    .iter()
    .map(|a| {
        (
            a["jti"].as_str().unwrap().to_owned(),
            a["kid"].as_str().unwrap().to_owned(),
        )
    })
    .collect();
    let stored = stored_sign_records(&d);
    assert_eq!(stored.len(), 8 + answers.len(), "one record per answer");
    for (jti, kid) in &answers {
        let mine: Vec<_> = stored.iter().filter(|(j, _, _)| j == jti).collect();
        assert_eq!(mine.len(), 1, "jti {jti}: {mine:?}");
        assert_eq!((mine[0].1.as_str(), &mine[0].2), ("ok", kid));
    }
    let (status, verify) = d.socket_json(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verify["ok"], true, "{verify}");
}

/// Everything a refusal could have changed.
async fn state(d: &Daemon) -> (bytes::Bytes, Value) {
    let (_, _, jwks) = d.jwks().await;
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    (jwks, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_the_json_error_shape_changes_nothing_and_is_audited() {
    let d = started().await;
    let before = state(&d).await;
    let ok = |v: Value| v.to_string().into_bytes();
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            "malformed JSON",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body",
        ),
        (
            "bytes after the JSON value",
            [
                ok(json!({"client_id": "app", "audience": AUD})),
                b" x".to_vec(),
            ]
            .concat(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "one JSON value and nothing after it",
        ),
        (
            "missing field",
            ok(json!({"client_id": "app"})),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "audience",
        ),
        (
            "unknown field",
            ok(json!({"client_id": "app", "audience": AUD, "scope": "x"})),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "scope",
        ),
        (
            "wrong type",
            ok(json!({"client_id": 5, "audience": AUD})),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "client_id",
        ),
        (
            "invalid UTF-8",
            b"{\"client_id\": \"\xff\xfe\", \"audience\": \"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body",
        ),
        (
            "lifetime over policy",
            ok(json!({"client_id": "app", "audience": AUD, "lifetime_s": 301})),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "lifetime_s = 301",
        ),
        (
            "zero lifetime",
            ok(json!({"client_id": "app", "audience": AUD, "lifetime_s": 0})),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "lifetime_s = 0",
        ),
        (
            "unsupported alg",
            ok(json!({"client_id": "app", "audience": AUD, "alg": "RS256"})),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "alg",
        ),
        (
            "unknown client",
            ok(json!({"client_id": "nobody", "audience": AUD})),
            StatusCode::FORBIDDEN,
            "forbidden",
            "nobody",
        ),
        (
            "client of another caller",
            ok(json!({"client_id": "other-app", "audience": AUD})),
            StatusCode::FORBIDDEN,
            "forbidden",
            "other-app",
        ),
        (
            "audience not allowed",
            ok(json!({"client_id": "app", "audience": "https://evil.example/token"})),
            StatusCode::FORBIDDEN,
            "forbidden",
            "audience",
        ),
        (
            "unknown set (answered as a set that is not the client's)",
            ok(json!({"client_id": "app", "audience": AUD, "set": "nope"})),
            StatusCode::FORBIDDEN,
            "forbidden",
            "does not belong to set \"nope\"",
        ),
        (
            "client of another caller in an unknown set (the same 403)",
            ok(json!({"client_id": "other-app", "audience": AUD, "set": "nope"})),
            StatusCode::FORBIDDEN,
            "forbidden",
            "client_id \"other-app\" is not allowed for this caller",
        ),
        (
            "body over 16 KiB",
            ok(json!({"client_id": "app", "audience": "x".repeat(17 * 1024)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "16384",
        ),
    ];
    for (what, body, status, code, needle) in &cases {
        let (got, answer) = d
            .socket_raw(Method::POST, "/v1/assertions", body.clone())
            .await;
        let answer: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|_| panic!("{what}: answer is not JSON: {answer:?}"));
        assert_eq!(got, *status, "{what}: {answer}");
        assert_eq!(answer["error"], *code, "{what}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{what}: message {message:?} does not name {needle:?}"
        );
        assert!(
            !message.contains(".toml"),
            "{what}: an answer to a caller names no file: {message:?}"
        );
        assert_eq!(
            answer.as_object().unwrap().len(),
            2,
            "{what}: exactly error and message"
        );
    }
    // Admin refusals too.
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/revoke",
            Some(json!({"kid": "default-rs384-v99-xxxxxxxx"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(
        state(&d).await,
        before,
        "a refusal changed the keys or the JWKS"
    );
    // The daemon goes on serving.
    d.assertion("ES384").await;
    // Every refusal was audited with the caller's identity and the reason.
    let (status, audit) = d
        .socket_json(Method::GET, "/v1/audit?limit=100", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let records = audit.as_array().unwrap();
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "sign" && r["outcome"] != "ok")
        .collect();
    assert_eq!(refused.len(), cases.len(), "{records:#?}");
    for r in &refused {
        assert_eq!(r["uid"], my_uid());
        assert!(r["detail"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(r["pid"].as_i64().is_some());
    }
    let (status, verify) = d.socket_json(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verify["ok"], true, "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_not_listed_in_any_policy_is_refused() {
    // The only caller is another uid: this process is nobody to the daemon.
    let text = policy("").replace(
        &format!("uid = {}", my_uid()),
        &format!("uid = {}", my_uid() + 1),
    );
    let d = Daemon::start(&text);
    d.ready().await;
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/assertions",
            Some(json!({"client_id": "app", "audience": AUD})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"], "forbidden");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains(&format!("uid {}", my_uid())),
        "{answer}"
    );
    let (status, _) = d.socket_json(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "now": true})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Still serving the JWKS.
    assert_eq!(d.jwks().await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_key_exists_jwks_and_signing_answer_503() {
    // RSA-8192 generation takes seconds: a window in which no key exists.
    let text = policy("")
        .replace("rsa_bits = 2048", "rsa_bits = 8192")
        .replace(
            r#"algorithms = ["RS384", "ES384"]"#,
            r#"algorithms = ["RS384"]"#,
        );
    let d = Daemon::start(&text);
    let (status, headers, body) = d.jwks().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert!(headers.get("retry-after").is_some());
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "unavailable");
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/assertions",
            Some(json!({"client_id": "app", "audience": AUD})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "unavailable");
    let (status, _, _) = http(d.admin, Method::GET, "/readyz", &[]).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_cacheable_with_a_strong_etag_304_head_and_sorted_keys() {
    let d = started().await;
    let (status, headers, body) = d.jwks().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "public, max-age=3600");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    let jwks = jwks_json(&body);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let mut sorted = kids.clone();
    sorted.sort();
    assert_eq!(kids, sorted, "keys ordered by kid");
    assert_eq!(kids.len(), 4, "active and pending, both algs");
    for k in jwks["keys"].as_array().unwrap() {
        for member in ["kty", "kid", "use", "alg"] {
            assert!(k.get(member).is_some(), "JWK without {member}: {k}");
        }
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                k.get(private).is_none(),
                "private member {private} published"
            );
        }
    }
    let (status, h304, body304) = http(
        d.public,
        Method::GET,
        "/.well-known/jwks.json",
        &[("if-none-match", &etag)],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body304.is_empty());
    assert_eq!(h304["etag"], etag.as_str());
    let (status, _, _) = http(
        d.public,
        Method::GET,
        "/.well-known/jwks.json",
        &[("if-none-match", "\"other\"")],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, hhead, bhead) = http(d.public, Method::HEAD, "/.well-known/jwks.json", &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(bhead.is_empty());
    for h in ["etag", "cache-control", "content-type"] {
        assert_eq!(hhead[h], headers[h], "HEAD differs in {h}");
    }
    let (status, _, named) = http(d.public, Method::GET, "/jwks/default.json", &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(named, body, "/jwks/default.json serves the same bytes");
    let (status, _, _) = http(d.public, Method::GET, "/jwks/nope.json", &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_from_the_environment_is_gone_from_proc_environ() {
    // Spawned: the environment of a process is what is under test.
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy(""));
    let key_file = tmp.path().join("master.key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    // The variable is the only source: no key file, none in the config.
    std::fs::remove_file(&key_file).unwrap();
    let config = tmp.path().join("jwksd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let without = text.replace("[seal]\nmaster_key_file = \"master.key\"\n", "");
    assert_ne!(without, text, "the test config names a key file");
    std::fs::write(&config, without).unwrap();
    let d = Daemon::spawn_in_with_env(tmp.path(), &[], &[("JWKSD_MASTER_KEY", &key)]);
    d.ready().await;
    d.settled().await;
    d.assertion("RS384").await;
    let environ = std::fs::read(format!("/proc/{}/environ", d.pid())).unwrap();
    assert!(
        !environ.windows(key.len()).any(|w| w == key.as_bytes()),
        "the master key is readable in /proc/PID/environ"
    );
    // What stays of the entry is its name, its value overwritten.
    let name = b"JWKSD_MASTER_KEY=";
    for at in
        (0..environ.len().saturating_sub(name.len())).filter(|&i| environ[i..].starts_with(name))
    {
        assert_eq!(
            environ.get(at + name.len()),
            Some(&0),
            "JWKSD_MASTER_KEY keeps a value in /proc/PID/environ"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_holds_no_usable_private_key_and_the_log_no_key_material() {
    // Spawned: the log searched must be all a real daemon writes (its
    // stderr, from every thread), and the stop is SIGTERM.
    let mut d = Daemon::spawn(&policy("")).when_settled().await;
    d.assertion("RS384").await;
    d.assertion("ES384").await;
    let master_text = std::fs::read_to_string(d.dir.join("master.key")).unwrap();
    let master = jwksd::keys::seal::MasterKey::from_base64(&master_text).unwrap();
    // Read the sealed blobs as any reader of the file could.
    let db = d.dir.join("jwksd.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT kid, alg, sealed_private FROM keys")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(rows.iter().filter(|r| r.2.is_some()).count(), 4);
    assert!(d.stop(), "clean shutdown");
    let mut haystack = std::fs::read(&db).unwrap();
    for suffix in ["-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", db.display())) {
            haystack.extend(b);
        }
    }
    let log = d.log();
    assert!(!log.is_empty());
    for (kid, alg, sealed) in rows {
        let sealed = sealed.unwrap();
        let alg: jwksd::types::Alg = alg.parse().unwrap();
        let kid = jwksd::types::Kid::from_stored(kid);
        // The blob itself is no key...
        let raw = jwksd::keys::secret::SecretBytes::copy_from(&sealed);
        assert!(jwksd::keys::SigningKey::from_pkcs8(alg, kid.clone(), &raw).is_err());
        // ...but it is this key, sealed: the master key opens it.
        let pkcs8 = master.open(&kid, &sealed).unwrap();
        assert!(jwksd::keys::SigningKey::from_pkcs8(alg, kid.clone(), &pkcs8).is_ok());
        // No 16-byte window of the private key appears in the store files or the log.
        for window in pkcs8.expose().windows(16).step_by(8) {
            assert!(
                !contains(&haystack, window),
                "{kid}: private key bytes in the store"
            );
            assert!(
                !contains(log.as_bytes(), window),
                "{kid}: private key bytes in the log"
            );
        }
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.expose());
        assert!(
            !log.contains(&b64[..40]),
            "{kid}: base64 of the private key in the log"
        );
    }
    let master_b64 = master_text.trim();
    assert!(!log.contains(master_b64), "master key in the log");
    assert!(
        !contains(&haystack, master_b64.as_bytes()),
        "master key in the store"
    );
    assert!(!log.contains("PRIVATE KEY"));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_files_finds_the_same_keys_and_serves_the_same_bytes() {
    let mut d = started().await;
    let (_, h1, jwks1) = d.jwks().await;
    let (_, keys1) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let socket = d.socket.clone();
    assert!(d.stop(), "a clean stop ends the daemon without an error");
    assert!(!socket.exists(), "a clean stop removes its socket file");
    let dir = d.dir.clone();
    let d2 = Daemon::start_in(&dir);
    d2.ready().await;
    let (_, h2, jwks2) = d2.jwks().await;
    assert_eq!(jwks1, jwks2, "same JWKS bytes after restart");
    assert_eq!(h1["etag"], h2["etag"]);
    let (_, keys2) = d2.socket_json(Method::GET, "/v1/keys", None).await;
    assert_eq!(
        keys1, keys2,
        "same keys after restart: nothing generated over them"
    );
    let jwt = d2.assertion("RS384").await["assertion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(verify_with_jwks(&jwt, &jwks_json(&jwks2)));
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_left_by_kill_9_is_replaced_and_the_socket_has_its_mode() {
    let mut d = Daemon::spawn(&policy("")).when_settled().await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    d.kill9();
    assert!(d.socket.exists(), "kill -9 leaves the socket file behind");
    let d2 = Daemon::start_in(&d.dir.clone());
    d2.ready().await;
    d2.assertion("ES384").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_live_socket_refuses_to_start() {
    let d = started().await;
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&d.config)
        .args(allow_root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another jwksd is listening"), "{err}");
    d.assertion("ES384").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_prints_the_served_jwks_and_lists_keys() {
    let d = started().await;
    let out = d.cli(&["sign", "--client-id", "app", "--aud", AUD, "--alg", "ES384"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).unwrap();
    assert_eq!(jwt.trim().split('.').count(), 3);
    let (_, _, served) = d.jwks().await;
    assert!(verify_with_jwks(jwt.trim(), &jwks_json(&served)));
    let out = d.cli(&["jwks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        served.to_vec(),
        "jwksd jwks prints exactly the served bytes"
    );
    let out = d.cli(&["keys", "list", "--json"]);
    assert!(out.status.success());
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &keys.as_array().unwrap()[0];
    let mut fields: Vec<&String> = first.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "activate_at",
            "alg",
            "created_at",
            "deactivate_at",
            "kid",
            "publish_at",
            "retire_at",
            "set",
            "state",
            "version"
        ]
    );
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));
    // A refusal is an error on stderr and a non-zero exit, nothing on stdout.
    let out = d.cli(&[
        "sign",
        "--client-id",
        "app",
        "--aud",
        "https://evil.example/token",
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
}

#[test]
fn policy_check_accepts_a_short_caching_policy_with_a_warning_naming_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.toml");
    std::fs::write(
        &short,
        policy("")
            .replace("jwks_max_age = \"1h\"", "jwks_max_age = \"30s\"")
            .replace("publish_ahead = \"2d\"", "publish_ahead = \"1m\""),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "check"])
        .arg(&short)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning is not a refusal: {err}");
    for field in [
        "jwks_max_age = 30s: under 1m",
        "publish_ahead = 1m: under 5m",
    ] {
        assert!(
            err.contains(&format!("warning: {}: {field}; ", short.display())),
            "{err}"
        );
    }
}

#[test]
fn policy_check_accepts_the_example_and_names_file_field_and_rule_of_a_bad_one() {
    let out = std::process::Command::new(BIN)
        .args(["policy", "check", "policies/default.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "the example policy is one to copy: no warning"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        policy("").replace("rsa_bits = 2048", "rsa_bits = 1024"),
    )
    .unwrap();
    let worse = dir.path().join("worse.toml");
    std::fs::write(
        &worse,
        policy("")
            .replace("grace = \"7d\"", "grace = \"1h\"")
            .replace("name = \"default\"", "name = \"other\"")
            .replace("\"app\"", "\"app2\""),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "check"])
        .arg(&bad)
        .arg(&worse)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: rsa_bits = 1024: must be >= 2048",
            bad.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}: grace = 1h", worse.display())),
        "{err}"
    );
}

#[test]
fn init_writes_a_working_starter_that_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(BIN)
            .args(["init", "--dir"])
            .arg(dir.path())
            .args(allow_root())
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let key = dir.path().join("master.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "master key private from creation");
    let first = std::fs::read(&key).unwrap();
    let again = run();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(&key).unwrap(),
        first,
        "init never replaces a master key"
    );
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("jwksd.toml"))
        .args(["policy", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
