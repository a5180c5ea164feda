//! One conformance suite for every `Store` (STYLE habit 6): each test below
//! is written once against `Arc<dyn Store>` and run twice, on SQLite (a temp
//! file) and on PostgreSQL (a fresh database per test, dropped afterwards,
//! so the tests run in parallel).
//!
//! PostgreSQL comes from `JWKSD_TEST_POSTGRES_URL` (a URL whose user may
//! create databases). If it is unset or does not answer, the PostgreSQL half
//! FAILS when `CI=true` and otherwise prints
//! `SKIPPED postgres conformance: <why>` and passes.

mod helpers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jwksd::audit::{self, AuditEntry, AuditKey, ChainKeys, Verified};
use jwksd::lifecycle::model::{Applied, Change, StoredKey};
use jwksd::store::api::ChainSwitch;
use jwksd::store::{PostgresStore, SqliteStore, Store, StoreError};
use jwksd::types::{Alg, KeyState, Kid, SetName};

use helpers::migrate_to_version_3;
use helpers::pg::{PgTestDb, with_database};
use sqlx::Connection as _;

// ---------------------------------------------------------------------------
// Databases

/// A fresh, empty database for one test; `open` gives another handle on it
/// (as a second replica would have).
enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres(PgTestDb),
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jwksd.db");
        Db::Sqlite { _dir: dir, path }
    }

    /// `None` (after saying why) when PostgreSQL is not available outside CI.
    async fn postgres() -> Option<Db> {
        helpers::pg::pg_or_skip("postgres conformance")
            .await
            .map(Db::Postgres)
    }

    /// Runs setup SQL on a connection of its own, outside the store, as
    /// another program sharing the database would: `sqlite` or `postgres`
    /// by database (several statements allowed).
    async fn run_sql(&self, sqlite: &str, postgres: &str) {
        match self {
            Db::Sqlite { path, .. } => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sqlite))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            Db::Postgres(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(postgres))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite { path, .. } => {
                Arc::new(SqliteStore::open(path).await.expect("open sqlite"))
            }
            Db::Postgres(pg) => {
                Arc::new(PostgresStore::open(&pg.url).await.expect("open postgres"))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Fixtures

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
}

fn set() -> SetName {
    SetName::new("default").unwrap()
}

fn kid(alg: Alg, version: u32) -> Kid {
    Kid::from_stored(format!(
        "default-{}-v{version}-abcdefgh",
        alg.as_str().to_lowercase()
    ))
}

/// A new key as the scheduler would insert it: published at `t(0)`.
fn key(alg: Alg, version: u32, state: KeyState, activate_at: Option<i64>) -> StoredKey {
    StoredKey {
        set: set(),
        alg,
        kid: kid(alg, version),
        version,
        state,
        public_jwk: format!(r#"{{"kid":"{}"}}"#, kid(alg, version)),
        sealed_private: Some(vec![version as u8; 48]),
        backend: "software".into(),
        backend_ref: None,
        created_at: t(0),
        publish_at: t(0),
        activate_at: activate_at.map(t),
        deactivate_at: None,
        retire_at: None,
        emergency: false,
    }
}

const RS: Alg = Alg::Rs384;

fn is_done(a: &Applied) -> bool {
    matches!(a, Applied::Done { .. })
}

fn done(activated: Option<Kid>, deactivated: Option<Kid>) -> Applied {
    Applied::Done {
        activated,
        deactivated,
    }
}

async fn apply(s: &Arc<dyn Store>, c: Change) -> Applied {
    s.apply(&c).await.expect("apply")
}

async fn get(s: &Arc<dyn Store>, k: &Kid) -> StoredKey {
    s.keys()
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.kid == *k)
        .unwrap_or_else(|| panic!("{k} not in store"))
}

async fn active_count(s: &Arc<dyn Store>, alg: Alg) -> usize {
    s.keys()
        .await
        .unwrap()
        .iter()
        .filter(|k| k.alg == alg && k.state == KeyState::Active)
        .count()
}

/// v1 active (since t(0)) and v2 pending, due at `due`.
async fn active_and_pending(s: &Arc<dyn Store>, due: i64) {
    let mut v1 = key(RS, 1, KeyState::Active, Some(0));
    v1.emergency = true;
    assert!(is_done(&apply(s, Change::Insert(v1)).await));
    assert!(is_done(
        &apply(s, Change::Insert(key(RS, 2, KeyState::Pending, Some(due)))).await
    ));
}

fn activate(version: u32, at: i64, emergency: bool) -> Change {
    Change::Activate {
        set: set(),
        alg: RS,
        kid: kid(RS, version),
        at: t(at),
        retire_at: t(at + 1000),
        emergency,
    }
}

/// The audit chain key every test appends under (one per test process).
fn ck() -> Arc<AuditKey> {
    static KEY: std::sync::LazyLock<Arc<AuditKey>> =
        std::sync::LazyLock::new(|| Arc::new(AuditKey::derive(&master())));
    KEY.clone()
}

fn master() -> jwksd::keys::seal::MasterKey {
    jwksd::keys::seal::MasterKey::generate().unwrap().0
}

/// How many records `all` holds when it verifies as a whole chain under
/// [`ck`].
fn verified(all: &[audit::AuditRecord]) -> Result<usize, audit::ChainError> {
    audit::verify_stored(&ChainKeys::resolve(&ck(), &[]), false, None, all).map(|v| v.records)
}

/// A re-seal's audit switch from [`ck`] to a throwaway key (the tests of
/// the re-seal's key rows; the chain across a switch has its own test).
fn switch() -> jwksd::store::api::ChainSwitch<'static> {
    static NEW: std::sync::LazyLock<AuditKey> =
        std::sync::LazyLock::new(|| AuditKey::derive(&master()));
    static OLD: std::sync::LazyLock<Arc<AuditKey>> = std::sync::LazyLock::new(ck);
    jwksd::store::api::ChainSwitch {
        old: &OLD,
        new: &NEW,
        wrap: NEW.wrap(&OLD).unwrap(),
        entry: audit::entry(t(0), "rotate-master", "ok"),
    }
}

fn audit_entry(n: usize, task: usize) -> AuditEntry {
    let mut e = audit::entry(t(n as i64), "sign", "ok");
    e.client_id = Some(format!("task-{task}"));
    e.jti = Some(format!("{task}-{n}"));
    e.uid = Some(1000 + task as u32);
    e.pid = Some(4242);
    e
}

// ---------------------------------------------------------------------------
// The suite

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::Db::postgres().await else { return };
                    super::$name(&db).await;
                }
            )*
            // PostgreSQL only: notifications between separate handles, and
            // a writer that bypasses the store's locks.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn changes_reach_another_handle_within_5_s() {
                let Some(db) = super::Db::postgres().await else { return };
                super::changes_reach_another_handle_within_5_s(&db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sslmode_require_urls_connect_over_tls() {
                let Some(db) = super::Db::postgres().await else { return };
                super::sslmode_require_urls_connect_over_tls(&db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_unique_violation_is_stale_not_an_error() {
                let Some(db) = super::Db::postgres().await else { return };
                super::a_unique_violation_is_stale_not_an_error(&db).await;
            }
        }
    };
}

conformance!(
    versions_count_up_by_one_per_set_and_alg,
    a_second_pending_or_active_key_is_stale,
    a_reused_kid_is_stale,
    activation_waits_until_due_and_rechecks_state,
    emergency_activation_skips_the_due_check,
    retire_happens_only_when_due,
    revoking_the_active_key_activates_the_pending_one_atomically,
    revoking_twice_is_stale,
    revoking_unknown_kid_is_an_error,
    reschedule_moves_only_pending_keys,
    private_halves_are_held_only_while_pending_or_active,
    revision_bumps_only_on_committed_changes,
    master_key_fingerprint_is_bound_once_and_refused_after,
    concurrent_audit_appenders_build_one_gap_free_chain,
    audit_tail_gives_the_latest_records_oldest_first,
    a_batch_longer_than_one_insert_statement_is_one_chain_with_every_field,
    lease_is_exclusive_renewable_expires_and_hands_over,
    changes_are_signalled_after_a_commit,
    racing_activations_have_exactly_one_winner,
    racing_inserts_have_exactly_one_winner,
    reseal_replaces_every_private_half_and_the_fingerprint_at_once,
    reseal_changes_nothing_when_the_store_moved,
    pruning_keeps_the_newest_record_and_an_anchor_the_chain_verifies_from,
    reseal_passes_the_audit_chain_to_the_new_key_with_the_switch_as_a_record,
    a_store_from_before_migration_4_migrates_and_its_unkeyed_chain_still_verifies,
    live_keys_are_the_keys_that_can_change_plus_the_newest_per_alg,
    a_state_update_that_moves_no_row_is_stale_and_commits_nothing,
    a_unique_violation_on_an_update_is_stale_and_commits_nothing,
    token_keys_keep_a_reference_only_while_they_may_sign_and_never_a_blob,
    keys_stored_before_migration_5_come_back_as_software_keys_with_their_blobs,
);

async fn reseal_replaces_every_private_half_and_the_fingerprint_at_once(db: &Db) {
    let s = db.open().await;
    s.bind_master_key("old-fp").await.unwrap();
    let active = key(RS, 1, KeyState::Active, Some(0));
    let pending = key(RS, 2, KeyState::Pending, Some(100));
    apply(&s, Change::Insert(active.clone())).await;
    apply(&s, Change::Insert(pending.clone())).await;
    let blobs = vec![
        (
            active.kid.clone(),
            active.sealed_private.clone().unwrap(),
            vec![0xAA; 60],
        ),
        (
            pending.kid.clone(),
            pending.sealed_private.clone().unwrap(),
            vec![0xBB; 60],
        ),
    ];
    s.reseal("old-fp", "new-fp", &blobs, &switch())
        .await
        .unwrap();
    assert_eq!(
        get(&s, &active.kid).await.sealed_private,
        Some(vec![0xAA; 60])
    );
    assert_eq!(
        get(&s, &pending.kid).await.sealed_private,
        Some(vec![0xBB; 60])
    );
    assert!(
        s.bind_master_key("old-fp").await.is_err(),
        "old fingerprint still accepted"
    );
    s.bind_master_key("new-fp").await.unwrap();
}

async fn reseal_changes_nothing_when_the_store_moved(db: &Db) {
    let s = db.open().await;
    s.bind_master_key("old-fp").await.unwrap();
    let active = key(RS, 1, KeyState::Active, Some(0));
    let pending = key(RS, 2, KeyState::Pending, Some(100));
    apply(&s, Change::Insert(active.clone())).await;
    apply(&s, Change::Insert(pending.clone())).await;
    // One blob read before it changed: the whole re-seal is refused.
    let stale = vec![
        (active.kid.clone(), vec![0x00; 48], vec![0xAA; 60]),
        (
            pending.kid.clone(),
            pending.sealed_private.clone().unwrap(),
            vec![0xBB; 60],
        ),
    ];
    assert!(matches!(
        s.reseal("old-fp", "new-fp", &stale, &switch()).await,
        Err(StoreError::ResealConflict(_))
    ));
    assert_eq!(
        get(&s, &pending.kid).await.sealed_private,
        pending.sealed_private
    );
    // A key missing from the list (generated meanwhile): refused too.
    let partial = vec![(
        active.kid.clone(),
        active.sealed_private.clone().unwrap(),
        vec![0xAA; 60],
    )];
    assert!(
        s.reseal("old-fp", "new-fp", &partial, &switch())
            .await
            .is_err()
    );
    // The wrong old fingerprint: refused.
    let all = vec![
        (
            active.kid.clone(),
            active.sealed_private.clone().unwrap(),
            vec![0xAA; 60],
        ),
        (
            pending.kid.clone(),
            pending.sealed_private.clone().unwrap(),
            vec![0xBB; 60],
        ),
    ];
    assert!(
        s.reseal("other-fp", "new-fp", &all, &switch())
            .await
            .is_err()
    );
    assert_eq!(
        get(&s, &active.kid).await.sealed_private,
        active.sealed_private
    );
    s.bind_master_key("old-fp").await.unwrap();
}

async fn pruning_keeps_the_newest_record_and_an_anchor_the_chain_verifies_from(db: &Db) {
    let s = db.open().await;
    let entries: Vec<AuditEntry> = (0..10)
        .map(|n| {
            let mut e = audit_entry(n, 0);
            e.at = 1_000 + n as i64;
            e
        })
        .collect();
    s.append_audit(&ck(), &entries).await.unwrap();
    assert_eq!(s.audit_anchor().await.unwrap(), None);
    // Records at 1000..=1004 are older than 1005.
    assert_eq!(s.prune_audit(&ck(), 1_005).await.unwrap(), 5);
    let rest = s.audit_all().await.unwrap();
    assert_eq!(rest.first().unwrap().seq, 6);
    let anchor = s.audit_anchor().await.unwrap().unwrap();
    assert_eq!(anchor.seq, 5);
    let key = ck();
    let keys = ChainKeys::resolve(&key, &[]);
    assert_eq!(
        audit::verify_stored(&keys, true, Some(&anchor), &rest).map(|v| v.records),
        Ok(5)
    );
    assert!(
        audit::verify_stored(&keys, true, None, &rest).is_err(),
        "a pruned chain does not start at genesis"
    );
    // Everything is old: the newest record stays, the chain goes on.
    assert_eq!(s.prune_audit(&ck(), 10_000).await.unwrap(), 4);
    let rest = s.audit_all().await.unwrap();
    assert_eq!(rest.len(), 1);
    s.append_audit(&ck(), &[audit_entry(99, 0)]).await.unwrap();
    let rest = s.audit_all().await.unwrap();
    let anchor = s.audit_anchor().await.unwrap();
    assert_eq!(
        audit::verify_stored(&keys, true, anchor.as_ref(), &rest).map(|v| v.records),
        Ok(2)
    );
}

async fn reseal_passes_the_audit_chain_to_the_new_key_with_the_switch_as_a_record(db: &Db) {
    let s = db.open().await;
    s.bind_master_key("old-fp").await.unwrap();
    let old = Arc::new(AuditKey::derive(&master()));
    let new = Arc::new(AuditKey::derive(&master()));
    let entries: Vec<AuditEntry> = (0..6)
        .map(|n| {
            let mut e = audit_entry(n, 0);
            e.at = 1_000 + n as i64;
            e
        })
        .collect();
    s.append_audit(&old, &entries).await.unwrap();
    assert_eq!(s.prune_audit(&old, 1_002).await.unwrap(), 2);
    let switch = ChainSwitch {
        old: &old,
        new: &new,
        wrap: new.wrap(&old).unwrap(),
        entry: audit::entry(t(2_000), "rotate-master", "ok"),
    };
    let record = s.reseal("old-fp", "new-fp", &[], &switch).await.unwrap();
    assert_eq!(record.seq, 7);
    assert_eq!(record.key.as_deref(), Some(new.id()));
    s.append_audit(&new, &[audit_entry(7, 0)]).await.unwrap();

    let all = s.audit_all().await.unwrap();
    assert_eq!(all[4], record, "the switch is a record of the chain");
    let anchor = s.audit_anchor().await.unwrap();
    assert!(
        anchor.as_ref().unwrap().is_authentic(&new),
        "anchor moved to the new key"
    );
    let wraps = s.audit_key_wraps().await.unwrap();
    // Only the new master key's chain key: the wrap leads back to the old.
    let keys = ChainKeys::resolve(&new, &wraps);
    assert_eq!(
        audit::verify_stored(&keys, true, anchor.as_ref(), &all),
        Ok(Verified {
            records: 6,
            unkeyed: 0
        })
    );
    // Without the wrap the records before the switch cannot be checked.
    assert!(
        audit::verify_stored(&ChainKeys::resolve(&new, &[]), true, anchor.as_ref(), &all).is_err()
    );
}

/// Applies migrations 1-3 only, as a release before the keyed chain did.
async fn migrate_db_to_version_3(db: &Db) {
    match db {
        Db::Sqlite { path, .. } => {
            migrate_to_version_3(&format!("sqlite://{}?mode=rwc", path.display())).await
        }
        Db::Postgres(pg) => migrate_to_version_3(&pg.url).await,
    }
}

async fn a_store_from_before_migration_4_migrates_and_its_unkeyed_chain_still_verifies(db: &Db) {
    migrate_db_to_version_3(db).await;
    // Records 3-5 of an unkeyed chain whose records 1-2 were pruned, as the
    // old code wrote them: SHA-256 links, and an unkeyed anchor.
    let mut prev = audit::GENESIS_HASH.to_owned();
    let mut sql = String::new();
    for seq in 1..=5 {
        let e = audit_entry(seq as usize, 0);
        let hash = audit::chain_hash(&prev, seq, &e);
        if seq == 2 {
            sql.push_str(&format!(
                "INSERT INTO meta (name, value) VALUES ('audit_anchor', '2:{hash}');"
            ));
        }
        if seq > 2 {
            sql.push_str(&format!(
                "INSERT INTO audit (seq, at, action, outcome, uid, pid, client_id, jti, prev_hash, hash) \
                 VALUES ({seq}, {}, 'sign', 'ok', {}, 4242, 'task-0', '{}', '{prev}', '{hash}');",
                e.at,
                e.uid.unwrap(),
                e.jti.unwrap()
            ));
        }
        prev = hash;
    }
    db.run_sql(&sql, &sql).await;

    let s = db.open().await;
    let key = ck();
    let keys = ChainKeys::resolve(&key, &[]);
    let old = s.audit_all().await.unwrap();
    assert!(
        old.iter().all(|r| r.key.is_none()),
        "old records are unkeyed"
    );
    // What the daemon does at its first start on the new schema.
    assert_eq!(s.key_legacy_anchor(&ck()).await.unwrap(), Some(2));
    assert_eq!(s.key_legacy_anchor(&ck()).await.unwrap(), None);
    let keyed = s.append_audit(&ck(), &[audit_entry(6, 0)]).await.unwrap();
    assert_eq!(
        keyed[0].prev_hash, prev,
        "the first keyed record binds the unkeyed chain"
    );
    let all = s.audit_all().await.unwrap();
    let anchor = s.audit_anchor().await.unwrap();
    assert_eq!(
        audit::verify_stored(&keys, true, anchor.as_ref(), &all),
        Ok(Verified {
            records: 4,
            unkeyed: 3
        })
    );
}

async fn keys_stored_before_migration_5_come_back_as_software_keys_with_their_blobs(db: &Db) {
    migrate_db_to_version_3(db).await;
    let insert = |blob: &str, emergency: &str| {
        format!(
            "INSERT INTO keys (kid, set_name, alg, version, state, public_jwk, sealed_private, \
             created_at, publish_at, activate_at, deactivate_at, retire_at, emergency) VALUES \
             ('default-rs384-v1-abcdefgh', 'default', 'RS384', 1, 'retiring', '{{}}', NULL, 0, 0, 0, 50, 900, {emergency}), \
             ('default-rs384-v2-abcdefgh', 'default', 'RS384', 2, 'active', '{{}}', {blob}, 0, 0, 50, NULL, NULL, {emergency}), \
             ('default-rs384-v3-abcdefgh', 'default', 'RS384', 3, 'pending', '{{}}', {blob}, 60, 60, 200, NULL, NULL, {emergency});"
        )
    };
    db.run_sql(
        &insert("X'0A0B0C'", "0"),
        &insert("'\\x0a0b0c'::bytea", "FALSE"),
    )
    .await;
    let s = db.open().await;
    let keys = s.keys().await.unwrap();
    assert_eq!(keys.len(), 3);
    for k in &keys {
        assert_eq!(
            (k.backend.as_str(), &k.backend_ref),
            ("software", &None),
            "{}",
            k.kid
        );
        let blob = k.state.holds_private().then(|| vec![0x0a, 0x0b, 0x0c]);
        assert_eq!(k.sealed_private, blob, "{}", k.kid);
    }
    // The rebuilt table keeps its rules: one active key, and a rotation
    // still erases the old signer's blob.
    apply(&s, activate(3, 200, false)).await;
    let v2 = get(&s, &kid(RS, 2)).await;
    assert_eq!((v2.state, v2.sealed_private), (KeyState::Retiring, None));
    assert_eq!(active_count(&s, RS).await, 1);
}

async fn versions_count_up_by_one_per_set_and_alg(db: &Db) {
    let s = db.open().await;
    let v1 = key(RS, 1, KeyState::Active, Some(0));
    assert_eq!(
        apply(&s, Change::Insert(v1.clone())).await,
        done(Some(v1.kid.clone()), None)
    );
    // Same version again, or a gap: refused.
    let mut again = key(RS, 1, KeyState::Pending, Some(10));
    again.kid = Kid::from_stored("default-rs384-v1-zzzzzzzz");
    assert!(matches!(
        apply(&s, Change::Insert(again)).await,
        Applied::Stale(_)
    ));
    assert!(matches!(
        apply(&s, Change::Insert(key(RS, 3, KeyState::Pending, Some(10)))).await,
        Applied::Stale(_)
    ));
    // A new key cannot start retiring, retired or revoked.
    let mut retiring = key(RS, 2, KeyState::Retiring, None);
    retiring.sealed_private = None;
    assert!(matches!(
        apply(&s, Change::Insert(retiring)).await,
        Applied::Stale(_)
    ));
    assert_eq!(
        apply(&s, Change::Insert(key(RS, 2, KeyState::Pending, Some(10)))).await,
        done(None, None)
    );
    // Each alg counts on its own.
    assert!(is_done(
        &apply(
            &s,
            Change::Insert(key(Alg::Es384, 1, KeyState::Active, Some(0)))
        )
        .await
    ));
    let keys = s.keys().await.unwrap();
    let listed: Vec<(Alg, u32)> = keys.iter().map(|k| (k.alg, k.version)).collect();
    let mut sorted = listed.clone();
    sorted.sort_by_key(|(a, v)| (a.as_str(), *v));
    assert_eq!(listed, sorted, "keys() is ordered by (set, alg, version)");
    assert_eq!(keys.len(), 3);
    // What was stored is what comes back.
    assert_eq!(get(&s, &v1.kid).await, v1);
}

async fn a_second_pending_or_active_key_is_stale(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    for state in [KeyState::Pending, KeyState::Active] {
        let applied = apply(&s, Change::Insert(key(RS, 3, state, Some(200)))).await;
        assert!(
            matches!(&applied, Applied::Stale(why) if why.contains("already")),
            "{state}: {applied:?}"
        );
    }
    assert_eq!(s.keys().await.unwrap().len(), 2);
}

async fn a_reused_kid_is_stale(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    // v3 arriving under v1's kid (kids are never reused, rule 5).
    let mut v3 = key(RS, 3, KeyState::Pending, Some(200));
    v3.kid = kid(RS, 1);
    apply(
        &s,
        Change::Revoke {
            kid: kid(RS, 2),
            at: t(5),
        },
    )
    .await;
    assert!(matches!(
        apply(&s, Change::Insert(v3)).await,
        Applied::Stale(_)
    ));
}

async fn activation_waits_until_due_and_rechecks_state(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    // Just before the due time: not yet.
    assert!(matches!(
        apply(&s, activate(2, 99, false)).await,
        Applied::Stale(why) if why.contains("not due")
    ));
    // At the due time: v2 signs, v1 retires without its private half.
    assert_eq!(
        apply(&s, activate(2, 100, false)).await,
        done(Some(kid(RS, 2)), Some(kid(RS, 1)))
    );
    let v1 = get(&s, &kid(RS, 1)).await;
    assert_eq!(v1.state, KeyState::Retiring);
    assert_eq!(v1.sealed_private, None);
    assert_eq!(v1.deactivate_at, Some(t(100)));
    assert_eq!(v1.retire_at, Some(t(1100)));
    let v2 = get(&s, &kid(RS, 2)).await;
    assert_eq!(v2.state, KeyState::Active);
    assert_eq!(v2.activate_at, Some(t(100)));
    assert!(!v2.emergency);
    // Already active: a replayed plan is stale.
    assert!(matches!(
        apply(&s, activate(2, 101, false)).await,
        Applied::Stale(_)
    ));
    // A stale kid (no longer pending) is stale too.
    assert!(matches!(
        apply(&s, activate(1, 101, true)).await,
        Applied::Stale(_)
    ));
    // Just after the due time works as well (fresh pending v3).
    apply(&s, Change::Insert(key(RS, 3, KeyState::Pending, Some(200)))).await;
    assert!(is_done(&apply(&s, activate(3, 201, false)).await));
    // A pending key named under another alg is stale.
    apply(&s, Change::Insert(key(RS, 4, KeyState::Pending, Some(300)))).await;
    let mut wrong_alg = activate(4, 300, false);
    if let Change::Activate { alg, .. } = &mut wrong_alg {
        *alg = Alg::Es384;
    }
    assert!(
        matches!(apply(&s, wrong_alg).await, Applied::Stale(why) if why.contains("belongs to"))
    );
    assert!(matches!(
        s.apply(&activate(9, 300, false)).await,
        Err(StoreError::UnknownKid(_))
    ));
    assert_eq!(active_count(&s, RS).await, 1);
}

async fn emergency_activation_skips_the_due_check(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 10_000).await;
    assert_eq!(
        apply(&s, activate(2, 5, true)).await,
        done(Some(kid(RS, 2)), Some(kid(RS, 1)))
    );
    let v2 = get(&s, &kid(RS, 2)).await;
    assert!(v2.emergency);
    assert_eq!(v2.activate_at, Some(t(5)));
}

async fn retire_happens_only_when_due(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    apply(&s, activate(2, 100, false)).await; // v1 retiring, retire_at t(1100)
    let retire = |at| Change::Retire {
        kid: kid(RS, 1),
        at: t(at),
    };
    assert!(matches!(apply(&s, retire(1099)).await, Applied::Stale(_)));
    assert_eq!(apply(&s, retire(1100)).await, done(None, None));
    assert_eq!(get(&s, &kid(RS, 1)).await.state, KeyState::Retired);
    assert!(matches!(apply(&s, retire(1101)).await, Applied::Stale(_)));
    // The active key and unknown kids never retire.
    let active = Change::Retire {
        kid: kid(RS, 2),
        at: t(99_999),
    };
    assert!(matches!(apply(&s, active).await, Applied::Stale(_)));
    let unknown = Change::Retire {
        kid: kid(RS, 9),
        at: t(99_999),
    };
    assert!(matches!(apply(&s, unknown).await, Applied::Stale(_)));
}

async fn revoking_the_active_key_activates_the_pending_one_atomically(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 10_000).await;
    let before = s.revision().await.unwrap();
    assert_eq!(
        apply(
            &s,
            Change::Revoke {
                kid: kid(RS, 1),
                at: t(50)
            }
        )
        .await,
        done(Some(kid(RS, 2)), Some(kid(RS, 1)))
    );
    // One change, one revision: both keys moved in the same transaction.
    assert_eq!(s.revision().await.unwrap(), before + 1);
    let v1 = get(&s, &kid(RS, 1)).await;
    assert_eq!(v1.state, KeyState::Revoked);
    assert_eq!(v1.sealed_private, None);
    assert_eq!(v1.deactivate_at, Some(t(50)));
    assert_eq!(v1.retire_at, Some(t(50)));
    let v2 = get(&s, &kid(RS, 2)).await;
    assert_eq!(v2.state, KeyState::Active);
    assert!(v2.emergency);
    assert_eq!(v2.activate_at, Some(t(50)));
    assert!(v2.sealed_private.is_some());
}

async fn revoking_twice_is_stale(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    let revoke = Change::Revoke {
        kid: kid(RS, 2),
        at: t(10),
    };
    // A pending key: out of the JWKS, nothing activates.
    assert_eq!(apply(&s, revoke.clone()).await, done(None, None));
    assert_eq!(get(&s, &kid(RS, 2)).await.sealed_private, None);
    assert!(matches!(
        apply(&s, revoke).await,
        Applied::Stale(why) if why.contains("revoked")
    ));
    assert_eq!(active_count(&s, RS).await, 1);
}

async fn revoking_unknown_kid_is_an_error(db: &Db) {
    let s = db.open().await;
    let revoke = Change::Revoke {
        kid: kid(RS, 7),
        at: t(10),
    };
    assert!(matches!(
        s.apply(&revoke).await,
        Err(StoreError::UnknownKid(k)) if k == kid(RS, 7).as_str()
    ));
}

async fn reschedule_moves_only_pending_keys(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    let resched = |v, at| Change::Reschedule {
        kid: kid(RS, v),
        activate_at: t(at),
    };
    assert_eq!(apply(&s, resched(2, 500)).await, done(None, None));
    assert_eq!(get(&s, &kid(RS, 2)).await.activate_at, Some(t(500)));
    // The new time is what activation checks.
    assert!(matches!(
        apply(&s, activate(2, 100, false)).await,
        Applied::Stale(_)
    ));
    assert!(matches!(
        apply(&s, resched(1, 900)).await,
        Applied::Stale(_)
    ));
    assert_eq!(get(&s, &kid(RS, 1)).await.activate_at, Some(t(0)));
    assert!(matches!(
        apply(&s, resched(9, 900)).await,
        Applied::Stale(_)
    ));
}

async fn private_halves_are_held_only_while_pending_or_active(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    apply(&s, activate(2, 100, false)).await; // v1 retiring
    apply(&s, Change::Insert(key(RS, 3, KeyState::Pending, Some(200)))).await;
    apply(
        &s,
        Change::Retire {
            kid: kid(RS, 1),
            at: t(1100),
        },
    )
    .await; // v1 retired
    apply(
        &s,
        Change::Revoke {
            kid: kid(RS, 2),
            at: t(150),
        },
    )
    .await; // v2 revoked, v3 active
    apply(&s, Change::Insert(key(RS, 4, KeyState::Pending, Some(300)))).await;
    let keys = s.keys().await.unwrap();
    let states: Vec<KeyState> = keys.iter().map(|k| k.state).collect();
    assert_eq!(
        states,
        [
            KeyState::Retired,
            KeyState::Revoked,
            KeyState::Active,
            KeyState::Pending
        ]
    );
    for k in keys {
        assert_eq!(
            k.sealed_private.is_some(),
            k.state.holds_private(),
            "{}: {}",
            k.kid,
            k.state
        );
    }
}

/// `key`, held in the token backend `hsm`: a reference (its kid as
/// CKA_ID) instead of a sealed blob.
fn token_key(alg: Alg, version: u32, state: KeyState, activate_at: Option<i64>) -> StoredKey {
    let k = key(alg, version, state, activate_at);
    StoredKey {
        sealed_private: None,
        backend: "hsm".into(),
        backend_ref: Some(k.kid.to_string()),
        ..k
    }
}

async fn token_keys_keep_a_reference_only_while_they_may_sign_and_never_a_blob(db: &Db) {
    let s = db.open().await;
    assert!(is_done(
        &apply(
            &s,
            Change::Insert(token_key(RS, 1, KeyState::Active, Some(0)))
        )
        .await
    ));
    apply(
        &s,
        Change::Insert(token_key(RS, 2, KeyState::Pending, Some(100))),
    )
    .await;
    apply(&s, activate(2, 100, false)).await; // v1 retiring
    apply(
        &s,
        Change::Insert(token_key(RS, 3, KeyState::Pending, Some(200))),
    )
    .await;
    apply(
        &s,
        Change::Revoke {
            kid: kid(RS, 2),
            at: t(150),
        },
    )
    .await; // v3 active
    let keys = s.keys().await.unwrap();
    for k in &keys {
        assert_eq!(k.backend, "hsm", "{}", k.kid);
        assert_eq!(k.sealed_private, None, "{}", k.kid);
        let held = k.state.holds_private().then(|| k.kid.to_string());
        assert_eq!(k.backend_ref, held, "{}: {}", k.kid, k.state);
    }
    // The database itself refuses a pending token key with no reference,
    // and a key holding both a blob and a reference.
    let mut orphan = token_key(RS, 4, KeyState::Pending, Some(300));
    orphan.backend_ref = None;
    assert!(s.apply(&Change::Insert(orphan)).await.is_err());
    let mut both = token_key(RS, 4, KeyState::Pending, Some(300));
    both.sealed_private = Some(vec![1; 48]);
    assert!(s.apply(&Change::Insert(both)).await.is_err());
    assert_eq!(s.keys().await.unwrap().len(), keys.len());
}

async fn revision_bumps_only_on_committed_changes(db: &Db) {
    let s = db.open().await;
    let r0 = s.revision().await.unwrap();
    apply(&s, Change::Insert(key(RS, 1, KeyState::Active, Some(0)))).await;
    assert_eq!(s.revision().await.unwrap(), r0 + 1);
    // Stale: no bump.
    apply(&s, Change::Insert(key(RS, 1, KeyState::Active, Some(0)))).await;
    assert_eq!(s.revision().await.unwrap(), r0 + 1);
    // Error: no bump.
    assert!(s.apply(&activate(5, 0, true)).await.is_err());
    assert_eq!(s.revision().await.unwrap(), r0 + 1);
    // Audit and lease writes are not key changes.
    s.append_audit(&ck(), &[audit_entry(1, 0)]).await.unwrap();
    s.acquire_lease("a", 15).await.unwrap();
    assert_eq!(s.revision().await.unwrap(), r0 + 1);
    apply(&s, Change::Insert(key(RS, 2, KeyState::Pending, Some(9)))).await;
    // Another handle sees the same revision.
    assert_eq!(db.open().await.revision().await.unwrap(), r0 + 2);
}

async fn master_key_fingerprint_is_bound_once_and_refused_after(db: &Db) {
    let s = db.open().await;
    s.bind_master_key("fp-one").await.unwrap();
    s.bind_master_key("fp-one").await.unwrap();
    let other = db.open().await;
    other.bind_master_key("fp-one").await.unwrap();
    match other.bind_master_key("fp-two").await {
        Err(StoreError::WrongMasterKey { stored, given }) => {
            assert_eq!((stored.as_str(), given.as_str()), ("fp-one", "fp-two"));
        }
        other => panic!("expected WrongMasterKey, got {other:?}"),
    }
}

async fn concurrent_audit_appenders_build_one_gap_free_chain(db: &Db) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let handles = [db.open().await, db.open().await];
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let s = handles[task % 2].clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_TASK {
                let out = s
                    .append_audit(&ck(), &[audit_entry(n, task)])
                    .await
                    .unwrap();
                assert_eq!(out.len(), 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = handles[0].audit_all().await.unwrap();
    assert_eq!(verified(&all), Ok(TASKS * PER_TASK));
    let seqs: Vec<i64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=(TASKS * PER_TASK) as i64).collect::<Vec<_>>());
    // Each appender's entries are in the order it appended them.
    for task in 0..TASKS {
        let mine: Vec<String> = all
            .iter()
            .filter(|r| r.entry.client_id.as_deref() == Some(&format!("task-{task}")))
            .map(|r| r.entry.jti.clone().unwrap())
            .collect();
        let want: Vec<String> = (0..PER_TASK).map(|n| format!("{task}-{n}")).collect();
        assert_eq!(mine, want);
    }
}

/// A spool replayed after a long outage is one `append_audit` of thousands
/// of entries: more rows than one INSERT statement may bind. Every field of
/// every record must come back as written, in one unbroken chain.
async fn a_batch_longer_than_one_insert_statement_is_one_chain_with_every_field(db: &Db) {
    let s = db.open().await;
    let entries: Vec<AuditEntry> = (0..2_345)
        .map(|n| {
            let mut e = audit_entry(n, n % 7);
            e.gid = (n % 2 == 0).then_some(n as u32);
            e.exe = Some(format!("/usr/bin/app-{n}"));
            e.audience = Some("https://ehr.example.com/oauth2/token".into());
            e.kid = Some(format!("default-es384-v{n}-abcdefgh"));
            e.detail =
                (n % 3 == 0).then(|| format!("refused: reason {n} with 'quotes' and \"double\""));
            e
        })
        .collect();
    let written = s.append_audit(&ck(), &entries).await.unwrap();
    assert_eq!(written.len(), entries.len());
    let stored = s.audit_all().await.unwrap();
    assert_eq!(stored, written);
    assert_eq!(
        stored.iter().map(|r| r.entry.clone()).collect::<Vec<_>>(),
        entries
    );
    assert_eq!(
        stored.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=entries.len() as i64).collect::<Vec<_>>()
    );
    assert_eq!(verified(&stored), Ok(entries.len()));
}

async fn audit_tail_gives_the_latest_records_oldest_first(db: &Db) {
    let s = db.open().await;
    assert!(s.audit_tail(5).await.unwrap().is_empty());
    let entries: Vec<AuditEntry> = (0..10).map(|n| audit_entry(n, 0)).collect();
    let written = s.append_audit(&ck(), &entries).await.unwrap();
    assert_eq!(
        written.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(s.append_audit(&ck(), &[]).await.unwrap().is_empty());
    let tail = s.audit_tail(3).await.unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [8, 9, 10]);
    assert_eq!(tail, written[7..]);
    assert!(s.audit_tail(0).await.unwrap().is_empty());
    assert_eq!(s.audit_tail(100).await.unwrap(), written);
    // A batch continues the chain written before it.
    let more = s.append_audit(&ck(), &[audit_entry(10, 1)]).await.unwrap();
    assert_eq!(more[0].prev_hash, written[9].hash);
    assert_eq!(verified(&s.audit_all().await.unwrap()), Ok(11));
}

async fn lease_is_exclusive_renewable_expires_and_hands_over(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    assert!(
        a.acquire_lease("replica-a", 1).await.unwrap(),
        "A takes the free lease"
    );
    assert!(
        !b.acquire_lease("replica-b", 30).await.unwrap(),
        "B cannot while A holds it"
    );
    assert!(a.acquire_lease("replica-a", 1).await.unwrap(), "A renews");
    // Releasing a lease one does not hold changes nothing.
    b.release_lease("replica-b").await.unwrap();
    assert!(!b.acquire_lease("replica-b", 30).await.unwrap());
    // The one wait of the suite: A stops renewing; by the database clock its
    // lease expires and B takes over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        b.acquire_lease("replica-b", 30).await.unwrap(),
        "B takes the expired lease"
    );
    assert!(
        !a.acquire_lease("replica-a", 1).await.unwrap(),
        "A learns it lost the lease"
    );
    // A clean shutdown hands over at once.
    b.release_lease("replica-b").await.unwrap();
    assert!(
        a.acquire_lease("replica-a", 15).await.unwrap(),
        "A takes the released lease"
    );
    assert!(!b.acquire_lease("replica-b", 15).await.unwrap());
}

async fn changes_are_signalled_after_a_commit(db: &Db) {
    let s = db.open().await;
    let changes = s.changes();
    assert!(Arc::ptr_eq(&changes, &s.changes()), "one Notify per store");
    apply(&s, Change::Insert(key(RS, 1, KeyState::Active, Some(0)))).await;
    tokio::time::timeout(Duration::from_secs(5), changes.notified())
        .await
        .expect("notified within 5 s of the commit");
}

async fn changes_reach_another_handle_within_5_s(db: &Db) {
    let (writer, reader) = (db.open().await, db.open().await);
    let changes = reader.changes();
    apply(
        &writer,
        Change::Insert(key(RS, 1, KeyState::Active, Some(0))),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), changes.notified())
        .await
        .expect("the other handle is notified within 5 s of the commit");
    assert_eq!(
        reader.revision().await.unwrap(),
        writer.revision().await.unwrap()
    );
}

/// Managed databases are reached with `?sslmode=require`: the build must
/// carry a TLS stack. (Checked only where the server offers TLS.)
async fn sslmode_require_urls_connect_over_tls(db: &Db) {
    let Db::Postgres(pg) = db else { unreachable!() };
    let mut admin = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    if ssl != "on" {
        eprintln!("server has ssl = {ssl}: sslmode=require not checked");
        return;
    }
    let sep = if pg.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}sslmode=require", pg.url);
    let s = PostgresStore::open(&url).await.expect("open over TLS");
    s.ping().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let over_tls: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(over_tls);
}

/// A writer that does not take the store's (set, alg) lock inserts a
/// conflicting key and commits while the store's insert waits on the unique
/// index: the store must answer Stale.
async fn a_unique_violation_is_stale_not_an_error(db: &Db) {
    let Db::Postgres(pg) = db else { unreachable!() };
    let s = db.open().await;
    apply(&s, Change::Insert(key(RS, 1, KeyState::Active, Some(0)))).await;
    let mut rogue = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut rogue).await.unwrap();
    sqlx::query(
        "INSERT INTO keys (kid, set_name, alg, version, state, public_jwk, sealed_private, created_at, publish_at) \
         VALUES ('default-rs384-v2-rogue000', 'default', 'RS384', 2, 'pending', '{}', '\\x00', 0, 0)",
    )
    .execute(&mut rogue)
    .await
    .unwrap();
    let store = s.clone();
    let racing = tokio::spawn(async move {
        store
            .apply(&Change::Insert(key(RS, 2, KeyState::Pending, Some(10))))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut rogue).await.unwrap();
    let applied = racing.await.unwrap().expect("a lost race is not an error");
    assert!(matches!(applied, Applied::Stale(_)), "{applied:?}");
}

/// A transition whose UPDATE moves no row did not happen: the change is
/// Stale and none of its other writes (the old key's deactivation, the
/// revoked key) are committed. A trigger that skips every activation stands
/// in for a writer that moved the row between the check and the write.
async fn a_state_update_that_moves_no_row_is_stale_and_commits_nothing(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    db.run_sql(
        "CREATE TRIGGER skip_activation BEFORE UPDATE OF state ON keys \
         WHEN NEW.state = 'active' BEGIN SELECT RAISE(IGNORE); END;",
        "CREATE FUNCTION skip_activation() RETURNS trigger LANGUAGE plpgsql \
           AS $$ BEGIN RETURN NULL; END $$; \
         CREATE TRIGGER skip_activation BEFORE UPDATE OF state ON keys FOR EACH ROW \
           WHEN (NEW.state = 'active') EXECUTE FUNCTION skip_activation();",
    )
    .await;
    let keys = s.keys().await.unwrap();
    let revision = s.revision().await.unwrap();
    let revoke = Change::Revoke {
        kid: kid(RS, 1),
        at: t(50),
    };
    for change in [activate(2, 100, false), revoke] {
        let applied = apply(&s, change.clone()).await;
        assert!(
            matches!(applied, Applied::Stale(_)),
            "{change:?}: {applied:?}"
        );
        assert_eq!(s.keys().await.unwrap(), keys, "{change:?} left a write");
        assert_eq!(s.revision().await.unwrap(), revision, "{change:?}");
    }
}

/// A unique index refusing any statement of a change, not only the INSERT,
/// is a lost race: Stale, never an error, and nothing committed. An extra
/// unique index on `activate_at` makes a reschedule onto another key's
/// activation time collide.
async fn a_unique_violation_on_an_update_is_stale_and_commits_nothing(db: &Db) {
    let s = db.open().await;
    active_and_pending(&s, 100).await;
    let unique = "CREATE UNIQUE INDEX keys_one_activate_at ON keys (activate_at)";
    db.run_sql(unique, unique).await;
    let keys = s.keys().await.unwrap();
    let revision = s.revision().await.unwrap();
    let onto_v1 = Change::Reschedule {
        kid: kid(RS, 2),
        activate_at: t(0),
    };
    let applied = s
        .apply(&onto_v1)
        .await
        .expect("a unique violation is not an error");
    assert!(matches!(applied, Applied::Stale(_)), "{applied:?}");
    assert_eq!(s.keys().await.unwrap(), keys);
    assert_eq!(s.revision().await.unwrap(), revision);
}

async fn racing_activations_have_exactly_one_winner(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    apply(&a, Change::Insert(key(RS, 1, KeyState::Active, Some(0)))).await;
    for round in 0..20u32 {
        let v = round + 2;
        apply(&a, Change::Insert(key(RS, v, KeyState::Pending, Some(0)))).await;
        let change = activate(v, i64::from(round) + 1, false);
        let (ca, cb) = (change.clone(), change);
        let (sa, sb) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move { sa.apply(&ca).await });
        let tb = tokio::spawn(async move { sb.apply(&cb).await });
        let results = [ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap()];
        let winners = results.iter().filter(|r| is_done(r)).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        assert_eq!(active_count(&a, RS).await, 1, "round {round}");
        assert_eq!(get(&b, &kid(RS, v)).await.state, KeyState::Active);
    }
}

async fn racing_inserts_have_exactly_one_winner(db: &Db) {
    let (a, b) = (db.open().await, db.open().await);
    apply(&a, Change::Insert(key(RS, 1, KeyState::Active, Some(0)))).await;
    for round in 0..10u32 {
        let v = round + 2;
        // Two replicas generated different keys for the same slot.
        let ka = key(RS, v, KeyState::Pending, Some(0));
        let mut kb = ka.clone();
        kb.kid = Kid::from_stored(format!("default-rs384-v{v}-bbbbbbbb"));
        let (sa, sb) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move { sa.apply(&Change::Insert(ka)).await });
        let tb = tokio::spawn(async move { sb.apply(&Change::Insert(kb)).await });
        let results = [ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap()];
        assert_eq!(
            results.iter().filter(|r| is_done(r)).count(),
            1,
            "round {round}: {results:?}"
        );
        // Activate the winner so the next round has a free pending slot.
        let winner = a
            .keys()
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.state == KeyState::Pending)
            .unwrap();
        let promote = Change::Activate {
            set: set(),
            alg: RS,
            kid: winner.kid,
            at: t(1),
            retire_at: t(2),
            emergency: true,
        };
        assert!(is_done(&apply(&a, promote).await));
    }
    assert_eq!(a.keys().await.unwrap().len(), 11);
}

#[test]
fn test_database_urls_keep_their_parameters() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=require", "x"),
        "postgres://u:p@h/x?sslmode=require"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}

async fn live_keys_are_the_keys_that_can_change_plus_the_newest_per_alg(db: &Db) {
    let s = db.open().await;
    let live = |s: Arc<dyn Store>| async move {
        s.live_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.alg, k.version, k.state))
            .collect::<Vec<_>>()
    };
    active_and_pending(&s, 100).await;
    apply(&s, activate(2, 100, false)).await; // v1 retiring until t(1100)
    assert!(is_done(
        &apply(
            &s,
            Change::Insert(key(RS, 3, KeyState::Pending, Some(5000)))
        )
        .await
    ));
    assert_eq!(
        live(s.clone()).await,
        vec![
            (RS, 1, KeyState::Retiring),
            (RS, 2, KeyState::Active),
            (RS, 3, KeyState::Pending)
        ]
    );
    // A retired key is history: the tick never needs it again.
    let retire = Change::Retire {
        kid: kid(RS, 1),
        at: t(1100),
    };
    assert_eq!(apply(&s, retire).await, done(None, None));
    assert_eq!(
        live(s.clone()).await,
        vec![(RS, 2, KeyState::Active), (RS, 3, KeyState::Pending)]
    );
    // The newest key of an alg stays, whatever its state: the next version
    // counts up from it. Algs are listed in (set, alg, version) order.
    assert!(is_done(
        &apply(
            &s,
            Change::Insert(key(Alg::Es384, 1, KeyState::Active, Some(0)))
        )
        .await
    ));
    assert!(is_done(
        &apply(
            &s,
            Change::Insert(key(Alg::Es384, 2, KeyState::Pending, Some(5000)))
        )
        .await
    ));
    let revoke = Change::Revoke {
        kid: kid(Alg::Es384, 2),
        at: t(1200),
    };
    assert_eq!(apply(&s, revoke).await, done(None, None));
    assert_eq!(
        live(s.clone()).await,
        vec![
            (Alg::Es384, 1, KeyState::Active),
            (Alg::Es384, 2, KeyState::Revoked),
            (RS, 2, KeyState::Active),
            (RS, 3, KeyState::Pending)
        ]
    );
    // The same rows as keys() returns for them.
    let all = s.keys().await.unwrap();
    for k in s.live_keys().await.unwrap() {
        assert_eq!(all.iter().find(|a| a.kid == k.kid), Some(&k));
    }
    assert_eq!(all.len(), 5);
}

/// SQLite only: an erased private half leaves no copy in the database's
/// files (main file, WAL, shared memory), also while the audit appender,
/// on its own connection, keeps committing batches around the erasure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_erased_private_half_leaves_no_copy_in_the_files_while_audit_batches_commit() {
    let db = Db::sqlite();
    let Db::Sqlite { path, .. } = &db else {
        unreachable!("Db::sqlite() is a SQLite database")
    };
    let files = |path: &PathBuf| {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            if let Ok(b) = std::fs::read(format!("{}{suffix}", path.display())) {
                all.extend(b);
            }
        }
        all
    };
    let holds =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    let s = db.open().await;
    let marker: Vec<u8> = b"sealed-private-half-marker-0123456789-"
        .iter()
        .copied()
        .cycle()
        .take(96)
        .collect();
    let mut v1 = key(RS, 1, KeyState::Active, Some(0));
    v1.emergency = true;
    v1.sealed_private = Some(marker.clone());
    assert!(is_done(&apply(&s, Change::Insert(v1)).await));
    assert!(is_done(
        &apply(&s, Change::Insert(key(RS, 2, KeyState::Pending, Some(100)))).await
    ));
    assert!(
        holds(&files(path), &marker),
        "the marker is not in the files before the erasure: this test would prove nothing"
    );
    let appending = {
        let s = s.clone();
        tokio::spawn(async move {
            for n in 0..400 {
                s.append_audit(&ck(), &[audit_entry(n, 0), audit_entry(n, 1)])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // v2 activates; v1 leaves `active` and its private half is erased.
    assert_eq!(
        apply(&s, activate(2, 100, false)).await,
        done(Some(kid(RS, 2)), Some(kid(RS, 1)))
    );
    assert_eq!(get(&s, &kid(RS, 1)).await.sealed_private, None);
    appending.await.unwrap();
    assert!(
        !holds(&files(path), &marker),
        "an erased private half is still in the database files"
    );
    let chain = s.audit_all().await.unwrap();
    assert_eq!(verified(&chain), Ok(800));
}
