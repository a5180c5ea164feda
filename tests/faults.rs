//! Storage faults under a running daemon: the SQLite file locked by another
//! process, a data directory that cannot grow (RLIMIT_FSIZE on the daemon:
//! as root, chmod would not stop it), and PostgreSQL refusing connections.
//! Each time: clear errors in the log, JWKS and signing go on from memory
//! (audit entries spooled), and once the fault is gone everything recovers
//! without intervention: the spool is replayed, the audit chain verifies,
//! transitions resume.

mod helpers;

use std::time::{Duration, Instant};

use helpers::pg::pg_or_skip;
use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection as _;

/// Signs both algs and checks each against the JWKS served at that moment.
async fn signs_from_memory(d: &Daemon, jwks_before: &[u8]) -> usize {
    let (status, _, body) = d.jwks().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, jwks_before, "JWKS changed during the fault");
    let jwks: Value = serde_json::from_slice(&body).unwrap();
    for alg in ["RS384", "ES384"] {
        let a = d.assertion(alg).await;
        assert!(verify_with_jwks(a["assertion"].as_str().unwrap(), &jwks));
    }
    2
}

/// After a fault: the spool empties into the store, the chain verifies
/// and counts every signature, and a rotation works.
async fn recovers(d: &Daemon, spool: &std::path::Path, signed_ok_at_least: usize) {
    wait_for(
        "the audit spool replayed",
        Duration::from_secs(30),
        || async { std::fs::metadata(spool).map_or(true, |m| m.len() == 0) },
    )
    .await;
    let (status, verify) = d.socket_json(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verify["ok"], true, "{verify}");
    let (_, records) = d
        .socket_json(Method::GET, "/v1/audit?limit=100000", None)
        .await;
    let ok_signs = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "sign" && r["outcome"] == "ok")
        .count();
    assert!(
        ok_signs >= signed_ok_at_least,
        "{ok_signs} signatures audited, {signed_ok_at_least} made"
    );
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "ES384", "now": true})),
        )
        .await;
    let log = d.log();
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert_eq!(
        status,
        StatusCode::OK,
        "{answer}\n{}",
        tail[tail.len().saturating_sub(15)..].join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_then_released() {
    let d = Daemon::start(&policy(""));
    d.ready().await;
    d.settled().await;
    let (_, _, jwks_before) = d.jwks().await;
    // Another process holds an exclusive transaction on the database file
    // (a separate connection is what another process would be).
    let url = format!("sqlite://{}", d.dir.join("jwksd.db").display());
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let mut signed = 0;
    let t = Instant::now();
    for _ in 0..3 {
        signed += signs_from_memory(&d, &jwks_before).await;
    }
    // The store's busy timeout is 10 s: the first write waits for it, then
    // the entry goes to the spool; requests are answered all the same.
    eprintln!(
        "sqlite locked: {signed} signatures in {:?} while locked",
        t.elapsed()
    );
    let spool = d.dir.join("audit-spool.jsonl");
    assert!(
        std::fs::metadata(&spool).is_ok_and(|m| m.len() > 0),
        "nothing spooled while the database was locked"
    );
    let log = d.log();
    assert!(
        log.contains("audit entries spooled locally until the store answers"),
        "no clear error in the log"
    );
    assert!(
        log.contains("locked"),
        "the log does not say the database is locked"
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    recovers(&d, &spool, signed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_that_cannot_grow_then_can() {
    // RLIMIT_FSIZE binds root too (chmod does not, and mounting a small
    // filesystem needs privileges CI containers often lack). `prlimit` caps
    // the running daemon's file size at 64 KiB: every write past that
    // offset fails with EFBIG, as on a full disk; the spool (small) still
    // fits.
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED full data directory: prlimit (util-linux) is not installed");
        return;
    }
    // Spawned: prlimit sets the limit of a process.
    let d = Daemon::spawn(&policy(""));
    d.ready().await;
    d.settled().await;
    let (_, _, jwks_before) = d.jwks().await;
    let db = d.dir.join("jwksd.db");
    let wal = d.dir.join("jwksd.db-wal");
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let limit = 64 * 1024;
    eprintln!("db {} bytes, wal {} bytes", size(&db), size(&wal));
    let set = |v: String| {
        let out = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", d.pid()))
            .arg(format!("--fsize={v}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    set(format!("{limit}:unlimited"));
    let mut signed = 0;
    for _ in 0..20 {
        signed += signs_from_memory(&d, &jwks_before).await;
    }
    assert!(d.pid() > 0, "daemon died");
    let log = d.log();
    let first = log
        .lines()
        .find(|l| l.contains("audit entries spooled locally"))
        .unwrap_or_else(|| panic!("the store never failed: the cap did not bite"))
        .to_owned();
    eprintln!("data directory capped at {limit} bytes: {signed} signatures; log: {first}");
    set("unlimited:unlimited".into());
    recovers(&d, &d.dir.join("audit-spool.jsonl"), signed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_cut_then_allowed_again() {
    let Some(db) = pg_or_skip("storage fault tests on PostgreSQL").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    write_files_with(tmp.path(), &policy(""), &db.url, &random_master_key());
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    d.settled().await;
    let (_, _, jwks_before) = d.jwks().await;
    db.block(true).await;
    let mut signed = 0;
    for _ in 0..5 {
        signed += signs_from_memory(&d, &jwks_before).await;
    }
    wait_for(
        "readyz to report the store down",
        Duration::from_secs(15),
        || async {
            matches!(
                http(d.admin, Method::GET, "/readyz", &[]).await,
                Ok((StatusCode::SERVICE_UNAVAILABLE, _, _))
            )
        },
    )
    .await;
    let log = d.log();
    assert!(log.contains("audit entries spooled locally until the store answers"));
    // While the store is down an admin rotation is refused, not half-done.
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "RS384", "now": true})),
        )
        .await;
    assert_ne!(status, StatusCode::OK);
    db.block(false).await;
    wait_for(
        "readyz after the store returns",
        Duration::from_secs(30),
        || async {
            matches!(
                http(d.admin, Method::GET, "/readyz", &[]).await,
                Ok((StatusCode::OK, _, _))
            )
        },
    )
    .await;
    recovers(&d, &tmp.path().join("audit-spool.jsonl"), signed).await;
}
