//! The audit chain against someone who can write the store (issue 15,
//! Medium 3): each test runs the real daemon on SQLite and on PostgreSQL,
//! stops it, changes the store the way an attacker would (plain SQL, no
//! jwksd code), starts it again (so no memory of what it wrote helps) and
//! asks `jwksd audit verify`.
//!
//! The attacker's tools are written here from the published algorithm
//! (SHA-256 or HMAC-SHA-256 over `prev_hash`, a newline and the record's
//! JSON), not taken from jwksd, so the tests say what an outsider can do.

mod helpers;

use std::path::{Path, PathBuf};

use aws_lc_rs::{hkdf, hmac};
use base64::Engine as _;
use jwksd::audit::{AuditEntry, chain_hash};
use serde::Serialize;
use sqlx::Connection as _;

use helpers::pg::{PgTestDb, pg_or_skip};
use helpers::*;

// ---------------------------------------------------------------------------
// The store, as the attacker sees it

enum Db {
    Sqlite(PathBuf),
    Postgres(PgTestDb),
}

/// One audit row: seq, the entry, prev_hash, hash.
type Row = (i64, AuditEntry, String, String);

type RawRow = (
    i64,
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

const SELECT: &str = "SELECT seq, at, action, outcome, uid, gid, pid, exe, client_id, audience, kid, jti, detail, prev_hash, hash FROM audit ORDER BY seq";

impl Db {
    async fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            Db::Postgres(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }

    async fn rows(&self) -> Vec<Row> {
        let raw: Vec<RawRow> = match self {
            Db::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_as(SELECT).fetch_all(&mut c).await.unwrap()
            }
            Db::Postgres(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                sqlx::query_as(SELECT).fetch_all(&mut c).await.unwrap()
            }
        };
        raw.into_iter()
            .map(|r| {
                let e = AuditEntry {
                    at: r.1,
                    action: r.2,
                    outcome: r.3,
                    uid: r.4.map(|v| v as u32),
                    gid: r.5.map(|v| v as u32),
                    pid: r.6.map(|v| v as i32),
                    exe: r.7,
                    client_id: r.8,
                    audience: r.9,
                    kid: r.10,
                    jti: r.11,
                    detail: r.12,
                };
                (r.0, e, r.13, r.14)
            })
            .collect()
    }
}

/// A daemon on a fresh store of `kind`, its files in a directory that
/// outlives restarts; `store_extra` goes into `[store]`.
struct Setup {
    d: Daemon,
    db: Db,
    _tmp: tempfile::TempDir,
}

impl Setup {
    async fn new(kind: &str, store_extra: &str) -> Option<Setup> {
        let tmp = tempfile::tempdir().unwrap();
        let db = match kind {
            "sqlite" => {
                write_files(tmp.path(), &policy(""));
                Db::Sqlite(tmp.path().join("jwksd.db"))
            }
            _ => {
                let pg = pg_or_skip("audit chain on PostgreSQL").await?;
                write_files_with(tmp.path(), &policy(""), &pg.url, &random_master_key());
                Db::Postgres(pg)
            }
        };
        let config = tmp.path().join("jwksd.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("[store]\n", &format!("[store]\n{store_extra}\n")),
        )
        .unwrap();
        let d = Daemon::start_in(tmp.path());
        d.ready().await;
        d.settled().await;
        Some(Setup { d, db, _tmp: tmp })
    }

    fn dir(&self) -> &Path {
        &self.d.dir
    }

    /// Stops the daemon, lets `attack` change the store, starts it again.
    async fn while_stopped<F: AsyncFnOnce(&Db)>(&mut self, attack: F) {
        assert!(self.d.stop());
        attack(&self.db).await;
        self.d = Daemon::start_in(self.dir());
        self.d.ready().await;
    }

    fn verify(&self, extra: &[&str]) -> (bool, String) {
        let out = self.d.cli(&[&["audit", "verify"], extra].concat());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn master_key(&self) -> Vec<u8> {
        let text = std::fs::read_to_string(self.dir().join("master.key")).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap()
    }
}

// ---------------------------------------------------------------------------
// The attacker's tools

#[derive(Serialize)]
struct Hashed<'a> {
    seq: i64,
    #[serde(flatten)]
    entry: &'a AuditEntry,
}

/// How the attacker recomputes the links after a change.
enum Recompute {
    /// The unkeyed SHA-256 of the old chain.
    Unkeyed,
    /// HMAC-SHA-256 under a key of the attacker's choosing.
    Hmac(Vec<u8>),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl Recompute {
    fn link(&self, prev: &str, seq: i64, e: &AuditEntry) -> String {
        match self {
            Recompute::Unkeyed => chain_hash(prev, seq, e),
            Recompute::Hmac(key) => {
                let k = hmac::Key::new(hmac::HMAC_SHA256, key);
                let body = serde_json::to_vec(&Hashed { seq, entry: e }).unwrap();
                let msg = [prev.as_bytes(), b"\n", &body].concat();
                hex(hmac::sign(&k, &msg).as_ref())
            }
        }
    }
}

/// The chain key as DESIGN §4 describes it: HKDF-SHA-256 of the master key
/// with the label "jwksd audit chain v1". Only an attacker who also holds
/// the master key has it.
fn chain_key_of(master: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(master)
        .expand(&[b"jwksd audit chain v1"], hkdf::HKDF_SHA256)
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out
}

/// Sets record `seq`'s outcome to `forbidden` and recomputes every later
/// link with `how`, so that each record chains to the one before.
async fn edit_and_recompute(db: &Db, seq: i64, how: &Recompute) {
    let rows = db.rows().await;
    let mut prev: Option<String> = None;
    let mut sql = String::new();
    for (s, mut e, prev_hash, hash) in rows {
        if s < seq {
            prev = Some(hash);
            continue;
        }
        if s == seq {
            e.outcome = "forbidden".into();
        }
        let p = prev.clone().unwrap_or(prev_hash);
        let h = how.link(&p, s, &e);
        sql.push_str(&format!(
            "UPDATE audit SET outcome = '{}', prev_hash = '{p}', hash = '{h}' WHERE seq = {s};",
            e.outcome
        ));
        prev = Some(h);
    }
    db.exec(&sql).await;
}

async fn some_activity(d: &Daemon, n: usize) {
    for _ in 0..n {
        d.assertion("ES384").await;
    }
}

// ---------------------------------------------------------------------------
// The tests, each on both databases

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("sqlite").await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("postgres").await;
                }
            )*
        }
    };
}

on_both!(
    an_edit_with_every_later_hash_recomputed_is_broken,
    deleted_records_behind_a_forged_anchor_are_broken,
    an_anchor_without_retention_configured_is_broken,
    the_chain_verifies_across_rotate_master_with_the_switch_record,
    a_witness_catches_a_change_even_when_the_chain_was_recomputed_with_the_right_key,
    a_store_with_the_old_unkeyed_chain_migrates_and_verifies,
);

async fn an_edit_with_every_later_hash_recomputed_is_broken(kind: &str) {
    let Some(mut s) = Setup::new(kind, "").await else {
        return;
    };
    some_activity(&s.d, 3).await;
    assert!(s.verify(&[]).0);
    // With the unkeyed algorithm, as the old chain was computed.
    s.while_stopped(async |db| edit_and_recompute(db, 2, &Recompute::Unkeyed).await)
        .await;
    let (ok, text) = s.verify(&[]);
    assert!(!ok, "a chain recomputed without the key verified: {text}");
    assert!(
        text.contains("BROKEN") && text.contains("record 2"),
        "{text}"
    );
    // With HMAC-SHA-256 under a key of the attacker's own.
    let other = chain_key_of(&[7u8; 32]);
    s.while_stopped(async |db| edit_and_recompute(db, 2, &Recompute::Hmac(other)).await)
        .await;
    let (ok, text) = s.verify(&[]);
    assert!(!ok, "a chain recomputed under another key verified: {text}");
    assert!(
        text.contains("BROKEN") && text.contains("record 2") && text.contains("edited"),
        "{text}"
    );
}

/// Records 1-20 deleted, and an anchor written that makes the rest start
/// where they ended, while retention is configured (so pruning is allowed).
async fn deleted_records_behind_a_forged_anchor_are_broken(kind: &str) {
    let Some(mut s) = Setup::new(kind, "audit_retention = \"400d\"").await else {
        return;
    };
    some_activity(&s.d, 22).await;
    assert!(s.verify(&[]).0);
    // As the old code wrote an anchor: seq and hash.
    s.while_stopped(async |db| {
        let rows = db.rows().await;
        let hash20 = &rows.iter().find(|r| r.0 == 20).unwrap().3;
        db.exec(&format!(
            "DELETE FROM audit WHERE seq <= 20; DELETE FROM meta WHERE name = 'audit_anchor'; \
             INSERT INTO meta (name, value) VALUES ('audit_anchor', '20:{hash20}');"
        ))
        .await;
    })
    .await;
    let (ok, text) = s.verify(&[]);
    assert!(
        !ok,
        "deleting records behind a forged anchor went unseen: {text}"
    );
    assert!(
        text.contains("BROKEN") && text.contains("anchor") && text.contains("not authenticated"),
        "{text}"
    );
    // With a made-up MAC.
    s.while_stopped(async |db| {
        let rows = db.rows().await;
        let hash20 = &rows.iter().find(|r| r.0 == 21).unwrap().2;
        db.exec(&format!(
            "UPDATE meta SET value = '20:{hash20}:{}' WHERE name = 'audit_anchor';",
            "ab".repeat(32)
        ))
        .await;
    })
    .await;
    let (ok, text) = s.verify(&[]);
    assert!(
        !ok && text.contains("anchor") && text.contains("not authenticated"),
        "{text}"
    );
}

async fn an_anchor_without_retention_configured_is_broken(kind: &str) {
    let Some(mut s) = Setup::new(kind, "").await else {
        return;
    };
    some_activity(&s.d, 6).await;
    s.while_stopped(async |db| {
        let rows = db.rows().await;
        let hash5 = &rows.iter().find(|r| r.0 == 5).unwrap().3;
        db.exec(&format!(
            "DELETE FROM audit WHERE seq <= 5; \
             INSERT INTO meta (name, value) VALUES ('audit_anchor', '5:{hash5}');"
        ))
        .await;
    })
    .await;
    let (ok, text) = s.verify(&[]);
    assert!(!ok, "an anchor without retention went unseen: {text}");
    assert!(
        text.contains("BROKEN") && text.contains("audit_retention is not configured"),
        "{text}"
    );
}

async fn the_chain_verifies_across_rotate_master_with_the_switch_record(kind: &str) {
    let Some(mut s) = Setup::new(kind, "").await else {
        return;
    };
    some_activity(&s.d, 3).await;
    let old_master = s.master_key();
    assert!(s.d.stop());
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(s.dir().join("jwksd.toml"))
        .args(["seal", "rotate-master"])
        .args(allow_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.d = Daemon::start_in(s.dir());
    s.d.ready().await;
    some_activity(&s.d, 2).await;
    // Only the new master key is left, and the whole chain verifies.
    assert_ne!(s.master_key(), old_master);
    let (ok, text) = s.verify(&[]);
    assert!(ok, "{text}");
    let rows = s.db.rows().await;
    let switch = rows
        .iter()
        .find(|r| r.1.action == "rotate-master")
        .expect("the switch is a record of the chain");
    assert!(
        switch
            .1
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("audit chain key")),
        "the switch record announces the new chain key: {:?}",
        switch.1.detail
    );
    // Whoever holds the OLD master key (the reason to rotate) cannot
    // rewrite the records before the switch either.
    let old_key = chain_key_of(&old_master);
    s.while_stopped(async |db| edit_and_recompute(db, 2, &Recompute::Hmac(old_key)).await)
        .await;
    let (ok, text) = s.verify(&[]);
    assert!(!ok && text.contains("BROKEN"), "{text}");
}

async fn a_witness_catches_a_change_even_when_the_chain_was_recomputed_with_the_right_key(
    kind: &str,
) {
    let Some(mut s) = Setup::new(kind, "").await else {
        return;
    };
    some_activity(&s.d, 3).await;
    let out = s.d.cli(&["audit", "head"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (seq, mac) = head.split_once(':').expect("SEQ:MAC");
    let seq: i64 = seq.parse().unwrap();
    assert_eq!(mac.len(), 64, "{head}");
    let rows = s.db.rows().await;
    assert_eq!(rows.last().unwrap().0, seq, "the head is the newest record");
    assert_eq!(rows.last().unwrap().3, mac);
    some_activity(&s.d, 2).await;
    // An intact store passes, also with records after the witness.
    let (ok, text) = s.verify(&["--head", &head]);
    assert!(ok && text.contains("matches"), "{text}");
    // The attacker holds the master key: the chain itself verifies again,
    // only the witness kept outside the store tells.
    let key = chain_key_of(&s.master_key());
    s.while_stopped(async |db| edit_and_recompute(db, seq - 1, &Recompute::Hmac(key)).await)
        .await;
    let (ok, text) = s.verify(&[]);
    assert!(
        ok,
        "recomputed with the right key, the chain alone verifies: {text}"
    );
    let (ok, text) = s.verify(&["--head", &head]);
    assert!(!ok, "the witness did not catch the change: {text}");
    assert!(
        text.contains("BROKEN") && text.contains(&format!("record {seq}")),
        "{text}"
    );
    // A witness for a record that is gone: the newest were deleted.
    let (ok, text) = s.verify(&["--head", &format!("{}:{mac}", seq + 1000)]);
    assert!(!ok && text.contains("missing"), "{text}");
    // A malformed witness is named before anything is asked.
    let (ok, text) = s.verify(&["--head", "12:xyz"]);
    assert!(
        !ok && text.contains("--head") && text.contains("SEQ:MAC"),
        "{text}"
    );
    // The daemon logs the head at shutdown (and every 5 minutes): a witness
    // for a log shipped off the host.
    assert!(s.d.stop());
    let newest = s.db.rows().await.pop().unwrap();
    let logged = format!("{}:{}", newest.0, newest.3);
    assert!(
        s.d.log()
            .lines()
            .any(|l| l.contains("audit head") && l.contains(&logged)),
        "no 'audit head' line with {logged} in the log"
    );
}

/// A store written by a release before the keyed chain (schema version 3,
/// unkeyed SHA-256 links, records 1-2 pruned behind an unkeyed anchor)
/// keeps working after the upgrade.
async fn a_store_with_the_old_unkeyed_chain_migrates_and_verifies(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (db, url) = match kind {
        "sqlite" => {
            let path = tmp.path().join("jwksd.db");
            let url = format!("sqlite://{}?mode=rwc", path.display());
            (Db::Sqlite(path), url)
        }
        _ => {
            let Some(pg) = pg_or_skip("audit chain on PostgreSQL").await else {
                return;
            };
            let url = pg.url.clone();
            (Db::Postgres(pg), url)
        }
    };
    migrate_to_version_3(&url).await;
    let mut prev = jwksd::audit::GENESIS_HASH.to_owned();
    let mut sql = String::new();
    // Recent, so that the retention below prunes none of them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for seq in 1..=5i64 {
        let e = AuditEntry {
            at: now - 100 + seq,
            action: "sign".into(),
            outcome: "ok".into(),
            uid: Some(1000),
            client_id: Some("app".into()),
            jti: Some(format!("jti-{seq}")),
            ..AuditEntry::default()
        };
        let hash = chain_hash(&prev, seq, &e);
        if seq == 2 {
            sql.push_str(&format!(
                "INSERT INTO meta (name, value) VALUES ('audit_anchor', '2:{hash}');"
            ));
        } else if seq > 2 {
            sql.push_str(&format!(
                "INSERT INTO audit (seq, at, action, outcome, uid, client_id, jti, prev_hash, hash) \
                 VALUES ({seq}, {}, 'sign', 'ok', 1000, 'app', 'jti-{seq}', '{prev}', '{hash}');",
                e.at
            ));
        }
        prev = hash;
    }
    db.exec(&sql).await;
    let store_url = match &db {
        Db::Sqlite(_) => "sqlite://jwksd.db".to_owned(),
        Db::Postgres(pg) => pg.url.clone(),
    };
    write_files_with(tmp.path(), &policy(""), &store_url, &random_master_key());
    let config = tmp.path().join("jwksd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[store]\n", "[store]\naudit_retention = \"400d\"\n"),
    )
    .unwrap();
    let mut d = Daemon::start_in(tmp.path());
    d.ready().await;
    d.settled().await;
    let out = d.cli(&["audit", "verify"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 of them unkeyed"), "{text}");
    // The unkeyed part is bound by the first keyed record: rewriting it
    // consistently is still found.
    assert!(d.stop());
    let rows = db.rows().await;
    let mut p = jwksd::audit::GENESIS_HASH.to_owned();
    let mut sql = String::new();
    for (seq, mut e, prev_hash, _) in rows.into_iter().filter(|r| r.0 <= 5) {
        if seq == 3 {
            p = prev_hash;
            e.outcome = "forbidden".into();
        }
        let h = chain_hash(&p, seq, &e);
        sql.push_str(&format!(
            "UPDATE audit SET outcome = '{}', prev_hash = '{p}', hash = '{h}' WHERE seq = {seq};",
            e.outcome
        ));
        p = h;
    }
    db.exec(&sql).await;
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    let out = d.cli(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("BROKEN") && text.contains("record 6"),
        "{text}"
    );
}
