//! Operations: metrics move when their event happens, health endpoints,
//! JSON logs.

mod helpers;

use std::os::unix::fs::PermissionsExt;

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
        "jwksd_audit_write_seconds",
        "jwksd_audit_batch_entries",
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
    // The three requests were audited: at least one durable write carried
    // their three records (they may have shared it).
    assert!(
        sample(&after, "jwksd_audit_write_seconds_count")
            - sample(&before, "jwksd_audit_write_seconds_count")
            >= 1.0,
        "{after}"
    );
    assert!(
        sample(&after, "jwksd_audit_batch_entries_sum")
            - sample(&before, "jwksd_audit_batch_entries_sum")
            >= 3.0,
        "{after}"
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
    // Spawned: --log-format is a flag of `serve`; the log is its stderr.
    let mut d = Daemon::spawn_with(&policy(""), &["--log-format", "json"]);
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
    // stdout too: the banner is one object shaped like the log's lines.
    let printed = d.stdout_lines();
    assert!(!printed.is_empty(), "the banner is printed");
    for line in &printed {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    let banner: serde_json::Value = serde_json::from_str(&printed[0]).unwrap();
    assert_eq!(banner["fields"]["message"], "jwksd listening");
    assert_eq!(banner["fields"]["public"], d.public.to_string());
    assert_eq!(
        banner["fields"]["jwks_urls"][0], "http://127.0.0.1:8080/.well-known/jwks.json",
        "the URL to register: server.public_url's"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_leaves_every_key_usable_and_the_old_key_useless() {
    let mut d = Daemon::start(&policy(""));
    let _tmp = d.keep_dir();
    d.ready().await;
    d.settled().await;
    let (_, keys_before) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let (_, _, jwks_before) = d.jwks().await;
    assert!(d.stop());
    let dir = d.dir.clone();
    let old_key_text = std::fs::read_to_string(dir.join("master.key")).unwrap();

    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(dir.join("jwksd.toml"))
        .args(["seal", "rotate-master"])
        .args(allow_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("re-sealed 4 private keys"), "{report}");
    let new_key_text = std::fs::read_to_string(dir.join("master.key")).unwrap();
    assert_ne!(old_key_text, new_key_text);
    assert!(!dir.join("master.key.new").exists());
    let mode = std::fs::metadata(dir.join("master.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // The old key opens none of the sealed blobs; the new one opens all.
    let old = jwksd::keys::seal::MasterKey::from_base64(&old_key_text).unwrap();
    let new = jwksd::keys::seal::MasterKey::from_base64(&new_key_text).unwrap();
    let url = format!("sqlite://{}?mode=ro", dir.join("jwksd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT kid, sealed_private FROM keys WHERE sealed_private IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(rows.len(), 4);
    for (kid, blob) in &rows {
        let kid = jwksd::types::Kid::from_stored(kid.clone());
        assert!(
            old.open(&kid, blob).is_err(),
            "{kid}: the old master key still opens it"
        );
        assert!(
            new.open(&kid, blob).is_ok(),
            "{kid}: the new master key does not open it"
        );
    }

    // Same keys, same JWKS, signing works on the new key.
    let d2 = Daemon::start_in(&dir);
    d2.ready().await;
    let (_, keys_after) = d2.socket_json(Method::GET, "/v1/keys", None).await;
    assert_eq!(keys_before, keys_after);
    let (_, _, jwks_after) = d2.jwks().await;
    assert_eq!(jwks_before, jwks_after);
    for alg in ["RS384", "ES384"] {
        let jwt = d2.assertion(alg).await["assertion"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(verify_with_jwks(
            &jwt,
            &serde_json::from_slice(&jwks_after).unwrap()
        ));
    }
    drop(d2);

    // The old key file is refused by the store.
    std::fs::write(dir.join("master.key"), &old_key_text).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(dir.join("jwksd.toml"))
        .args(["serve"])
        .args(allow_root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another master key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_refuses_while_the_daemon_runs() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    let out = d.cli(&[&["seal", "rotate-master"][..], &allow_root()].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    d.assertion("ES384").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_prunes_old_records_and_the_chain_still_verifies() {
    let mut d = Daemon::start(&policy(""));
    let _tmp = d.keep_dir();
    d.ready().await;
    d.settled().await;
    for _ in 0..5 {
        d.assertion("ES384").await;
    }
    assert!(d.stop());
    let dir = d.dir.clone();
    let config = std::fs::read_to_string(dir.join("jwksd.toml")).unwrap();
    std::fs::write(
        dir.join("jwksd.toml"),
        config.replace("[store]\n", "[store]\naudit_retention = \"1s\"\n"),
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let d2 = Daemon::start_in(&dir);
    d2.ready().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, tail) = d2
            .socket_json(Method::GET, "/v1/audit?limit=50", None)
            .await;
        if tail
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "prune")
        {
            let first = tail.as_array().unwrap()[0]["seq"].as_i64().unwrap();
            assert!(first > 5, "old records still there: first seq {first}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no pruning: {tail}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, verify) = d2.socket_json(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verify["ok"], true, "{verify}");
}

/// As root, the commands that write key files refuse without
/// `--allow-root`, say why, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_refuse_root_without_allow_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED root refusal of init and rotate-master: not running as root");
        return;
    }
    let why = |out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("as root")
                && err.contains("could not read them")
                && err.contains("run it as the daemon's user")
                && err.contains("--allow-root"),
            "{err}"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path().join("starter"))
        .output()
        .unwrap();
    why(&out);
    assert!(!dir.path().join("starter").exists(), "init wrote files");

    let mut d = Daemon::start(&policy(""));
    let _tmp = d.keep_dir();
    d.ready().await;
    assert!(d.stop());
    let key_before = std::fs::read(d.dir.join("master.key")).unwrap();
    why(&d.cli(&["seal", "rotate-master"]));
    assert_eq!(std::fs::read(d.dir.join("master.key")).unwrap(), key_before);
    assert!(!d.dir.join("master.key.new").exists());
}

/// `seal rotate-master` holds every unsealed key: it turns core dumps off
/// and makes itself non-dumpable before it reads anything. Seen from
/// outside while it waits on its config file (a FIFO): its core limit is
/// 0, and /proc/PID/status belongs to root, which the kernel does for a
/// non-dumpable process (run as `nobody` when the test is root, so that
/// the owner tells).
#[test]
fn rotate_master_is_not_dumpable_and_dumps_no_core() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy of the binary that `nobody` can run wherever the checkout is.
    let bin = dir.path().join("jwksd");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fifo = dir.path().join("jwksd.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).unwrap();

    let root = nix::unistd::geteuid().is_root();
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    let mut child = cmd
        .arg("--config")
        .arg(&fifo)
        .args(["seal", "rotate-master"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let proc_dir = format!("/proc/{pid}");
    let state = || {
        let limits = std::fs::read_to_string(format!("{proc_dir}/limits")).unwrap_or_default();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let owner = std::fs::metadata(format!("{proc_dir}/status"))
            .map(|m| m.uid())
            .ok();
        // comm, unlike exe, stays readable when the process is not dumpable.
        let comm = std::fs::read_to_string(format!("{proc_dir}/comm")).unwrap_or_default();
        (core, owner, comm.trim().to_owned())
    };
    // setpriv execs the command in place: wait for that, then for the
    // hygiene, which comes before the config file is opened.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let seen = loop {
        let now = state();
        if now.2 == "jwksd" && now.0 == "0 0" && now.1 == Some(0) {
            break Ok(now);
        }
        if std::time::Instant::now() > deadline {
            break Err(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    if let Err((core, owner, comm)) = seen {
        panic!(
            "rotate-master waiting on its config: core limit {core:?}, /proc/PID/status owner {owner:?} (non-dumpable shows 0), comm {comm:?}"
        );
    }
}

/// `jwksd serve` on `config`, which must refuse to start: its stderr. One
/// still running after 20 s started: the test fails.
fn serve_refuses(config: &std::path::Path) -> String {
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .args(allow_root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("serve started: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A policy grants signing rights, and the config chooses the policies and
/// the store: a policy file, the policy directory or the config file that
/// group or others may write is refused, naming it, its mode and the rule.
/// A reload keeps the policies in force; `policy check` only warns (it may
/// run on a checkout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_others_may_write_are_refused() {
    let mut d = Daemon::start(&policy(""));
    let _tmp = d.keep_dir();
    d.ready().await;
    let file = d.dir.join("policies/default.toml");
    let rule = |what: &str| format!("a {what} must not be writable by group or others");
    // The caller granted one more client, in a file its group may write.
    let widened = policy("").replace("clients = [\"app\"]", "clients = [\"app\", \"other-app\"]");
    std::fs::write(&file, widened).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
    d.reload();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.log().contains("policy reload refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "reload never refused: {}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let named = format!("{}: mode 0664: {}", file.display(), rule("policy file"));
    assert!(d.log().contains(&named), "{}", d.log());
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/assertions",
            Some(json!({"client_id": "other-app", "audience": AUD})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the old policy stays: {answer}"
    );
    d.assertion("ES384").await;

    let check = d.cli(&["policy", "check"]);
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{err}");
    assert!(err.contains(&format!("warning: {named}")), "{err}");

    assert!(d.stop());
    assert!(serve_refuses(&d.config).contains(&named));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let policies = d.dir.join("policies");
    std::fs::set_permissions(&policies, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let err = serve_refuses(&d.config);
    assert!(
        err.contains(&format!(
            "{}: mode 1777: {}",
            policies.display(),
            rule("policy directory")
        )),
        "{err}"
    );

    std::fs::set_permissions(&policies, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o620)).unwrap();
    let err = serve_refuses(&d.config);
    assert!(
        err.contains(&format!(
            "{}: mode 0620: {}",
            d.config.display(),
            rule("config file")
        )),
        "{err}"
    );
}

/// `keys revoke` on PostgreSQL says where the sealed private half survives
/// (old row versions, WAL, backups), on stderr so that stdout stays the
/// JSON answer; on SQLite, which overwrites it, it says nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_revoke_on_postgres_says_where_the_sealed_half_survives() {
    let Some(db) = helpers::pg::pg_or_skip("keys revoke note on PostgreSQL").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    write_files_with(tmp.path(), &policy(""), &db.url, &random_master_key());
    let on_postgres = Daemon::start_in(tmp.path()).when_settled().await;
    let on_sqlite = Daemon::start(&policy("")).when_settled().await;
    for (d, note) in [(&on_postgres, true), (&on_sqlite, false)] {
        let keys = d.settled().await;
        let kid = keys.iter().find(|k| k["state"] == "pending").unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = d.cli(&["keys", "revoke", &kid]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["state"], "revoked");
        assert_eq!(
            err.contains("PostgreSQL keeps the old row version"),
            note,
            "{err}"
        );
        if note {
            assert!(
                err.contains("WAL archives, standbys and backups") && err.contains("master key"),
                "{err}"
            );
        }
    }
}
