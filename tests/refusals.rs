//! A refused caller cannot fill the disk through the audit trail: each
//! refusal's record holds bounded text, a uid's refusals beyond its budget
//! (`store.audit_refusals_per_minute`) are counted and summarised instead
//! of recorded one by one, and while the store cannot be written refusals
//! never take the spool room a listed caller's signature needs.

mod helpers;

use std::time::{Duration, Instant};

use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// A peer in no policy.
const STRANGER: u32 = 4242;
/// `nogroup`: owns the socket file, so the stranger can connect.
const SOCKET_GROUP: u32 = 65534;
/// Refusals sent by each caller.
const FLOOD: usize = 300;

/// A request body just under the 16 KiB bound, all of it caller text.
fn huge_request() -> String {
    let body = json!({
        "client_id": "c".repeat(8000),
        "audience": format!("https://ehr.example.com/{}", "a".repeat(8000)),
    })
    .to_string();
    assert!(body.len() < 16 * 1024);
    body
}

fn store_bytes(dir: &std::path::Path) -> u64 {
    ["jwksd.db", "jwksd.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_grows_the_store_by_a_bounded_amount() {
    let others = can_run_callers_as_others("audit flooding by a peer in no policy");
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy(""));
    if others {
        open_socket_to_group(tmp.path(), SOCKET_GROUP);
    }
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    d.settled().await;
    let before = store_bytes(tmp.path());
    let started = Instant::now();

    // A listed caller (this process) asking for a client and an audience
    // it may not have: its body is read, its text is caller text.
    for _ in 0..FLOOD {
        let (status, _) = d
            .socket_raw(Method::POST, "/v1/assertions", huge_request().into_bytes())
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // A peer in no policy, as another uid.
    if others {
        let socket = d.socket.clone();
        let answers = tokio::task::spawn_blocking(move || {
            let who = As {
                uid: STRANGER,
                gid: STRANGER,
                groups: &[SOCKET_GROUP],
            };
            curl_as(
                &socket,
                &who,
                "POST",
                "/v1/assertions",
                Some(&huge_request()),
                FLOOD,
            )
        })
        .await
        .unwrap();
        assert_eq!(answers.len(), FLOOD);
        assert!(answers.iter().all(|(s, _)| *s == 403), "{:?}", answers[0]);
    }
    let elapsed = started.elapsed().as_secs();
    // A listed caller still signs.
    d.assertion("ES384").await;

    let (_, records) = d
        .socket_json(Method::GET, "/v1/audit?limit=100000", None)
        .await;
    let records = records.as_array().unwrap();
    let refused_of = |uid: u32| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["uid"] == uid && r["outcome"] == "forbidden")
            .collect()
    };
    // The budget: 60 at once, then one a second; the rest is counted.
    let budget = 60 + elapsed as usize + 1;
    let mut recorded = 0;
    let callers = if others {
        vec![my_uid(), STRANGER]
    } else {
        vec![my_uid()]
    };
    for &uid in &callers {
        let refused = refused_of(uid);
        assert!(
            (60..=budget).contains(&refused.len()),
            "uid {uid}: {} refusals recorded in {elapsed} s, budget {budget}",
            refused.len()
        );
        for r in &refused {
            let size = r.to_string().len();
            assert!(size < 3000, "a refusal record of {size} bytes: {r}");
            // The cut message leaves room for the caller's groups.
            let detail = r["detail"].as_str().unwrap();
            if uid == my_uid() {
                assert!(detail.contains("…(truncated: "), "{detail}");
            }
            if uid == STRANGER || !nix::unistd::getgroups().unwrap().is_empty() {
                assert!(detail.contains("; groups "), "{detail}");
            }
        }
        recorded += refused.len();
    }
    let caller_text = records
        .iter()
        .filter_map(|r| r["client_id"].as_str())
        .find(|c| c.starts_with("ccc"))
        .unwrap();
    assert!(
        caller_text.contains("…(truncated: 8000 bytes, sha256 "),
        "{caller_text}"
    );
    let suppressed = metric(
        &d,
        "jwksd_audit_refusals_suppressed_total{why=\"uid_budget\"}",
    )
    .await
    .unwrap();
    assert_eq!(
        suppressed as usize + recorded,
        FLOOD * callers.len(),
        "every refusal is recorded or counted"
    );
    let grown = store_bytes(tmp.path()).saturating_sub(before);
    eprintln!(
        "{} refusals of 16 KiB bodies in {elapsed} s: {recorded} recorded, {suppressed} counted; store grew by {grown} bytes (db + wal)",
        FLOOD * callers.len()
    );
    // Mostly WAL frames: about two pages per commit, whatever the record.
    assert!(
        grown < (recorded as u64 + 16) * 12 * 1024,
        "the store grew by {grown} bytes for {recorded} records"
    );

    // At shutdown each uid's summary says how many were left out.
    let mut d = d;
    assert!(d.stop());
    let store = jwksd::store::SqliteStore::open(&tmp.path().join("jwksd.db"))
        .await
        .unwrap();
    let all = jwksd::store::Store::audit_all(&store).await.unwrap();
    let mut summarised = 0;
    for r in all.iter().filter(|r| r.entry.action == "refusals") {
        assert_eq!(r.entry.outcome, "suppressed");
        let detail = r.entry.detail.as_deref().unwrap();
        let n: usize = detail.split(' ').next().unwrap().parse().unwrap();
        assert!(
            detail.contains(&format!("of uid {} ", r.entry.uid.unwrap())),
            "{detail}"
        );
        summarised += n;
    }
    assert_eq!(
        summarised, suppressed as usize,
        "the summaries count them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_take_the_spool_room_a_signature_needs() {
    // As in tests/faults.rs: RLIMIT_FSIZE on the spawned daemon makes every
    // write past 64 KiB fail with EFBIG, as on a full disk: the database
    // cannot grow, and the spool (a new file) has 64 KiB of room.
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED spool room: prlimit (util-linux) is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy(""));
    // No uid budget here: the spool's own bound is under test.
    let cfg = tmp.path().join("jwksd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[store]\n",
        "[store]\naudit_refusals_per_minute = 100000\naudit_spool_refusal_bytes = 8192\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::spawn_in(tmp.path());
    d.ready().await;
    d.settled().await;
    let set = |v: &str| {
        let out = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", d.pid()))
            .arg(format!("--fsize={v}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    set("65536:unlimited");
    // Refusals first, many of them, each with 16 KiB of caller text.
    for i in 0..200 {
        let (status, answer) = socket_try(
            &d.socket,
            Method::POST,
            "/v1/assertions",
            huge_request().into_bytes(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("refusal {i}: {e}"));
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer:?}");
    }
    let spool = tmp.path().join("audit-spool.jsonl");
    let spooled = std::fs::metadata(&spool).map_or(0, |m| m.len());
    assert!(
        d.log().contains("audit entries spooled locally"),
        "the store never failed: the cap did not bite"
    );
    // Then the listed caller: every signature still goes out, its record
    // spooled.
    for _ in 0..20 {
        d.assertion("ES384").await;
    }
    let dropped = metric(
        &d,
        "jwksd_audit_refusals_suppressed_total{why=\"spool_full\"}",
    )
    .await
    .unwrap();
    eprintln!(
        "store full: spool {spooled} bytes after 200 refusals, {dropped} refusal records left out; 20 signatures spooled"
    );
    assert!(dropped > 0.0);
    // Refusals stopped one batch past the room.
    assert!(spooled < 8192 + 4096, "{spooled} bytes of refusals spooled");

    // Room again: the spool reaches the chain, and so does the fact that
    // refusals were left out.
    set("unlimited:unlimited");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        d.assertion("ES384").await;
        if std::fs::metadata(&spool).is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "the spool was never replayed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    d.assertion("ES384").await;
    let (_, verify) = d.socket_json(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(verify["ok"], true, "{verify}");
    let (_, records) = d
        .socket_json(Method::GET, "/v1/audit?limit=100000", None)
        .await;
    let records = records.as_array().unwrap();
    let signed = records
        .iter()
        .filter(|r| r["action"] == "sign" && r["outcome"] == "ok")
        .count();
    assert!(signed >= 22, "{signed} signatures audited");
    let said: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "refusals" && r["outcome"] == "dropped")
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    let n: f64 = said[0]["detail"]
        .as_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(n, dropped);
}
