//! Operations: metrics move when their event happens, health endpoints,
//! JSON logs.

mod helpers;

use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::json;

async fn metrics(d: &Daemon) -> String {
    let (status, _, body) = http(d.admin, Method::GET, "/metrics", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of the sample whose line starts with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_and_moves_with_its_event() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    d.settled().await;
    let before = metrics(&d).await;
    for name in [
        "jwksd_signatures_total",
        "jwksd_sign_seconds",
        "jwksd_jwks_requests_total",
        "jwksd_jwks_not_modified_total",
        "jwksd_transition_failures_total",
        "jwksd_store_errors_total",
        "jwksd_leader",
        "jwksd_active_key_age_seconds",
        "jwksd_next_transition_seconds",
    ] {
        let base = name.trim_end_matches("_total");
        assert!(
            before.contains(&format!("# TYPE {base} ")),
            "{name} missing:\n{before}"
        );
    }
    assert_eq!(sample(&before, "jwksd_leader "), 1.0);
    let next = sample(&before, "jwksd_next_transition_seconds{");
    assert!(next > 0.0, "seconds until the next activation: {next}");

    d.assertion("ES384").await;
    d.assertion("ES384").await;
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/assertions",
            Some(json!({"client_id": "app", "audience": "https://evil.example/t"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, headers, _) = d.jwks().await;
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let (status, _, _) = http(
        d.public,
        Method::GET,
        "/.well-known/jwks.json",
        &[("if-none-match", &etag)],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    let after = metrics(&d).await;
    let ok = r#"jwksd_signatures_total{set="default",alg="ES384",client="app",outcome="ok"}"#;
    assert_eq!(sample(&after, ok) - sample(&before, ok), 2.0, "{after}");
    let refused =
        r#"jwksd_signatures_total{set="default",alg="unknown",client="app",outcome="forbidden"}"#;
    assert_eq!(sample(&after, refused), 1.0, "{after}");
    assert_eq!(
        sample(&after, "jwksd_sign_seconds_count") - sample(&before, "jwksd_sign_seconds_count"),
        3.0
    );
    assert!(
        sample(&after, "jwksd_jwks_requests_total") - sample(&before, "jwksd_jwks_requests_total")
            >= 2.0
    );
    assert_eq!(
        sample(&after, "jwksd_jwks_not_modified_total")
            - sample(&before, "jwksd_jwks_not_modified_total"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_client_id_never_becomes_a_metric_label() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    for i in 0..5 {
        let (status, _) = d
            .socket_json(
                Method::POST,
                "/v1/assertions",
                Some(json!({"client_id": format!("made-up-{i}"), "audience": AUD})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let text = metrics(&d).await;
    assert!(!text.contains("made-up"), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"jwksd_signatures_total{set="unknown",alg="unknown",client="unknown",outcome="forbidden"}"#
        ),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    let (status, _, body) = http(d.admin, Method::GET, "/healthz", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok\n");
    let (status, _, _) = http(d.admin, Method::GET, "/readyz", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_prints_one_json_object_per_line() {
    let mut d = Daemon::start_with(&policy(""), &["--log-format", "json"]);
    d.ready().await;
    d.settled().await;
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/assertions",
            Some(json!({"client_id": "app", "audience": "https://evil.example/t"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(d.stop());
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() > 5, "{log}");
    let mut refused = 0;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "assertion refused" {
            refused += 1;
            assert_eq!(v["fields"]["status"], 403);
        }
    }
    assert_eq!(refused, 1, "one log event per refusal");
}

/// Runs `jwksd audit verify` against the daemon; (exit ok, stdout+stderr).
fn audit_verify(d: &Daemon) -> (bool, String) {
    let out = d.cli(&["audit", "verify"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn tamper(d: &Daemon, sql: &str) {
    let url = format!("sqlite://{}", d.dir.join("jwksd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_on_a_real_run_and_catches_edited_deleted_and_swapped_records() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    d.settled().await;
    for _ in 0..3 {
        d.assertion("ES384").await;
    }
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/assertions",
            Some(json!({"client_id": "nobody", "audience": AUD})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (ok, text) = audit_verify(&d);
    assert!(ok, "{text}");
    assert!(text.contains("intact"), "{text}");

    // tail --json: one object per line with the documented fields.
    let out = d.cli(&["audit", "tail", "-n", "3", "--json"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for field in [
        "seq",
        "at",
        "action",
        "outcome",
        "uid",
        "gid",
        "pid",
        "exe",
        "client_id",
        "audience",
        "kid",
        "jti",
        "detail",
        "prev_hash",
        "hash",
    ] {
        assert!(
            lines[0].get(field).is_some(),
            "tail --json lacks {field}: {}",
            lines[0]
        );
    }

    // Edited: an ok signature turned into a refusal.
    tamper(&d, "UPDATE audit SET outcome = 'forbidden' WHERE seq = 2").await;
    let (ok, text) = audit_verify(&d);
    assert!(
        !ok && text.contains("record 2") && text.contains("edited"),
        "{text}"
    );
    tamper(&d, "UPDATE audit SET outcome = 'ok' WHERE seq = 2").await;
    assert!(
        audit_verify(&d).0,
        "restoring the record restores the chain"
    );

    // Swapped: two records exchange places (content and seq).
    tamper(&d, "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -1").await;
    let (ok, text) = audit_verify(&d);
    assert!(!ok, "swap not detected: {text}");
    tamper(&d, "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -1").await;
    assert!(audit_verify(&d).0);

    // Cut off at the end: a valid shorter chain, but this daemon knows
    // what it wrote last. (The verify calls above are audited too.)
    tamper(
        &d,
        "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
    )
    .await;
    let (ok, text) = audit_verify(&d);
    assert!(
        !ok && text.contains("newest records were deleted"),
        "{text}\n{}",
        d.log()
            .lines()
            .filter(|l| l.contains("audit"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Deleted in the middle.
    tamper(&d, "DELETE FROM audit WHERE seq = 2").await;
    let (ok, text) = audit_verify(&d);
    assert!(!ok && text.contains("missing"), "{text}");
}
