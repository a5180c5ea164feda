//! Live lifecycle tests on a real daemon: rotate, revoke, kill -9 in the
//! middle of a rotation, and policy reload on SIGHUP.

mod helpers;

use std::time::{Duration, Instant};

use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

async fn started() -> Daemon {
    Daemon::start(&policy("")).when_settled().await
}

fn key<'a>(keys: &'a Value, alg: &str, state: &str) -> Option<&'a Value> {
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["alg"] == alg && k["state"] == state)
}

fn kids_in(jwks: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(jwks).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_now_activates_the_pending_key_and_publishes_a_new_successor() {
    let d = started().await;
    let (_, before) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let old_active = key(&before, "ES384", "active").unwrap()["kid"].clone();
    let old_pending = key(&before, "ES384", "pending").unwrap()["kid"].clone();
    let old_jwt = d.assertion("ES384").await["assertion"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "ES384", "now": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["set"], "default");
    assert_eq!(answer["alg"], "ES384");
    assert_eq!(answer["activated"], old_pending);
    assert_eq!(answer["deactivated"], old_active);
    let new_pending = answer["pending"].as_str().unwrap();
    assert!(
        new_pending.starts_with("default-es384-v3-"),
        "{new_pending}"
    );

    // Answered once the new key signs.
    let fresh = d.assertion("ES384").await;
    assert_eq!(fresh["kid"], old_pending);
    let (_, _, jwks) = d.jwks().await;
    let kids = kids_in(&jwks);
    for kid in [
        old_active.as_str().unwrap(),
        old_pending.as_str().unwrap(),
        new_pending,
    ] {
        assert!(
            kids.iter().any(|k| k == kid),
            "{kid} not published: {kids:?}"
        );
    }
    // An assertion signed before the rotation still verifies (grace).
    assert!(verify_with_jwks(
        &old_jwt,
        &serde_json::from_slice(&jwks).unwrap()
    ));
    let (_, after) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let retiring = key(&after, "ES384", "retiring").unwrap();
    assert_eq!(retiring["kid"], old_active);
    let grace = ts(&retiring["retire_at"]) - ts(&retiring["deactivate_at"]);
    assert_eq!(grace, chrono::Duration::days(7));
    // RS384 untouched.
    assert_eq!(
        key(&after, "RS384", "active"),
        key(&before, "RS384", "active")
    );
    assert!(
        d.log().contains("skipping pre-publication"),
        "emergency activation is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_now_without_alg_rotates_every_algorithm_and_says_until_when_caches_may_refuse() {
    let d = started().await;
    let (_, before) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "now": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let outcomes = answer.as_array().expect("one outcome per algorithm");
    let algs: Vec<&str> = outcomes
        .iter()
        .map(|o| o["alg"].as_str().unwrap())
        .collect();
    assert_eq!(algs, ["RS384", "ES384"], "{answer}");
    for o in outcomes {
        let alg = o["alg"].as_str().unwrap();
        assert_eq!(o["activated"], key(&before, alg, "pending").unwrap()["kid"]);
        assert_eq!(
            o["deactivated"],
            key(&before, alg, "active").unwrap()["kid"]
        );
        // The new signer was published when the daemon started, seconds
        // ago: a verifier that cached the JWKS just before may refuse it
        // for jwks_max_age (1h) after its publication.
        let h = &o["handover"];
        assert_eq!(h["kid"], o["activated"], "{o}");
        let published = ts(&h["published_at"]);
        assert_eq!(
            ts(&h["caches_may_refuse_until"]) - published,
            chrono::Duration::hours(1),
            "{o}"
        );
        assert!(h["published_s_ago"].as_i64().unwrap() < 600, "{o}");
        // Both signers changed: assertions carry the new kids.
        assert_eq!(d.assertion(alg).await["kid"], o["activated"]);
    }
    assert!(
        d.log().contains("may refuse its assertions until"),
        "the hand-over is logged"
    );
    // Revoking the new RS384 signer hands over again, to a key published
    // moments ago: the answer says so.
    let rs = outcomes[0]["activated"].as_str().unwrap();
    let (status, answer) = d
        .socket_json(Method::POST, "/v1/admin/revoke", Some(json!({"kid": rs})))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["handover"]["kid"], answer["activated"], "{answer}");
    assert!(
        answer["handover"]["caches_may_refuse_until"].is_string(),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_without_now_schedules_the_earliest_activation_rule_1_allows() {
    let d = started().await;
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "RS384"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["activated"], Value::Null);
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let pending = key(&keys, "RS384", "pending").unwrap();
    assert_eq!(answer["pending"], pending["kid"]);
    let ahead = ts(&pending["activate_at"]) - ts(&pending["publish_at"]);
    assert_eq!(ahead, chrono::Duration::days(2), "publish_ahead is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_active_key_removes_it_at_once_and_hands_over_to_its_successor() {
    let d = started().await;
    let (_, before) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let active = key(&before, "RS384", "active").unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let pending = key(&before, "RS384", "pending").unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/revoke",
            Some(json!({"kid": active})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (&answer["kid"], &answer["state"], &answer["activated"]),
        (&json!(active), &json!("revoked"), &json!(pending)),
        "{answer}"
    );
    assert_eq!(answer["handover"]["kid"], json!(pending), "{answer}");
    // Out of this replica's JWKS by the time the answer came.
    let (_, _, jwks) = d.jwks().await;
    let kids = kids_in(&jwks);
    assert!(!kids.contains(&active), "revoked key still published");
    assert!(kids.contains(&pending));
    assert_eq!(d.assertion("RS384").await["kid"], pending.as_str());
    let (_, after) = d.socket_json(Method::GET, "/v1/keys", None).await;
    assert!(
        key(&after, "RS384", "pending").is_some(),
        "a new successor exists"
    );
    // Revoking again is a conflict, an unknown kid is 404.
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/admin/revoke",
            Some(json!({"kid": active})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = d
        .socket_json(
            Method::POST,
            "/v1/admin/revoke",
            Some(json!({"kid": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_retiring_key_unpublishes_it_before_its_grace_ends() {
    let d = started().await;
    let (_, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "ES384", "now": true})),
        )
        .await;
    let retiring = answer["deactivated"].as_str().unwrap().to_owned();
    assert!(kids_in(&d.jwks().await.2).contains(&retiring));
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/revoke",
            Some(json!({"kid": retiring})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["activated"],
        Value::Null,
        "a retiring key hands over nothing"
    );
    assert!(!kids_in(&d.jwks().await.2).contains(&retiring));
}

/// Exactly one active key per alg, straight from the database file.
async fn db_check(dir: &std::path::Path) -> Vec<(String, String, String)> {
    let url = format!("sqlite://{}?mode=ro", dir.join("jwksd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT kid, alg, state FROM keys ORDER BY kid")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    for alg in ["RS384", "ES384"] {
        let active = rows
            .iter()
            .filter(|r| r.1 == alg && r.2 == "active")
            .count();
        assert_eq!(active, 1, "{alg}: {active} active keys in {rows:?}");
        let pending = rows
            .iter()
            .filter(|r| r.1 == alg && r.2 == "pending")
            .count();
        assert!(pending <= 1, "{alg}: {pending} pending keys");
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_rotations_loses_nothing_and_never_makes_two_signers() {
    let mut d = Daemon::spawn(&policy("")).when_settled().await;
    let _tmp = d.keep_dir();
    let dir = d.dir.clone();
    let mut seen: Vec<String> = Vec::new();
    for round in 0..6u64 {
        let socket = d.socket.clone();
        // Fire a rotation and kill the daemon a moment later, at a different
        // point each round (before, during or after the transaction).
        let rotate = tokio::spawn(async move {
            let body = json!({"set": "default", "alg": if round % 2 == 0 { "RS384" } else { "ES384" }, "now": true});
            let _ = jwksd::commands::client::call(
                &socket,
                Method::POST,
                "/v1/admin/rotate",
                Some(body),
            )
            .await;
        });
        tokio::time::sleep(Duration::from_millis(round * 15)).await;
        d.kill9();
        let _ = rotate.await;
        let rows = db_check(&dir).await;
        for kid in &seen {
            assert!(
                rows.iter().any(|r| &r.0 == kid),
                "round {round}: {kid} lost"
            );
        }
        seen = rows.iter().map(|r| r.0.clone()).collect();
        d = Daemon::spawn_in(&dir);
        d.ready().await;
        d.settled().await;
        db_check(&dir).await;
        let (_, _, jwks) = d.jwks().await;
        let jwks: Value = serde_json::from_slice(&jwks).unwrap();
        for alg in ["RS384", "ES384"] {
            let jwt = d.assertion(alg).await["assertion"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                verify_with_jwks(&jwt, &jwks),
                "round {round}: {alg} does not verify"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_policy_and_reschedules_on_a_good_one() {
    let d = started().await;
    let policy_file = d.dir.join("policies/default.toml");
    // What SIGHUP does (tls.rs sends the signal itself, to a process).
    let hup = || d.reload();
    std::fs::write(
        &policy_file,
        policy("").replace("rsa_bits = 2048", "rsa_bits = 1024"),
    )
    .unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("policy reload refused") {
        assert!(
            Instant::now() < deadline,
            "reload never refused: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.log().contains("rsa_bits = 1024: must be >= 2048"));
    d.assertion("RS384").await;

    std::fs::write(
        &policy_file,
        policy("").replace("rotate_every = \"30d\"", "rotate_every = \"10d\""),
    )
    .unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
        let active = key(&keys, "ES384", "active").unwrap();
        let pending = key(&keys, "ES384", "pending").unwrap();
        let gap = ts(&pending["activate_at"]) - ts(&active["activate_at"]);
        if gap == chrono::Duration::days(10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending key not rescheduled: gap {gap}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, audit) = d.socket_json(Method::GET, "/v1/audit?limit=50", None).await;
    let reloads: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "reload")
        .collect();
    assert_eq!(reloads.len(), 2);
    assert_eq!(reloads[0]["outcome"], "refused");
    assert_eq!(reloads[1]["outcome"], "ok");
}

/// The uid of the admin of the second set, `partner` (a `curl_as` child).
const PARTNER_ADMIN: u32 = 65534;

/// A second set, `partner`, ES384 only, whose admin (and only caller) is
/// PARTNER_ADMIN.
fn partner_policy() -> String {
    format!(
        r#"name = "partner"
algorithms = ["ES384"]
rotate_every = "30d"
publish_ahead = "2d"
grace = "7d"
jwks_max_age = "1h"
assertion_lifetime = "4m"
clock_skew = "1m"

[[clients]]
client_id = "partner-app"
audiences = ["{AUD}"]

[[callers]]
uid = {PARTNER_ADMIN}
clients = ["partner-app"]
admin = true
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_of_one_set_reads_and_probes_only_its_own_sets() {
    if !can_run_callers_as_others("admin scoping") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write_files(tmp.path(), &policy(""));
    std::fs::write(tmp.path().join("policies/partner.toml"), partner_policy()).unwrap();
    open_socket_to_group(tmp.path(), PARTNER_ADMIN);
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    let partner = As {
        uid: PARTNER_ADMIN,
        gid: PARTNER_ADMIN,
        groups: &[],
    };
    let as_partner = |method: &'static str, path: &'static str, body: Option<Value>| {
        let socket = d.socket.clone();
        let body = body.map(|b| b.to_string());
        let who = As { ..partner };
        tokio::task::spawn_blocking(move || {
            let (status, text) = curl_as(&socket, &who, method, path, body.as_deref(), 1).remove(0);
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{status} not JSON ({e}): {text}"));
            (status, value)
        })
    };

    // One signature in each set, by each set's own caller.
    let own = d.assertion("ES384").await;
    let (status, theirs) = as_partner(
        "POST",
        "/v1/assertions",
        Some(json!({"client_id": "partner-app", "audience": AUD})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{theirs}");
    let partner_kid = theirs["kid"].as_str().unwrap().to_owned();
    assert!(partner_kid.starts_with("partner-es384-"), "{partner_kid}");

    // Keys: each admin lists its own set's keys only.
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k["set"] == "default")
    );
    let (_, keys) = as_partner("GET", "/v1/keys", None).await.unwrap();
    assert!(!keys.as_array().unwrap().is_empty());
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k["set"] == "partner")
    );

    // Probing the other set answers as for a set or kid that does not
    // exist, word for word.
    let ask = |path: &'static str, body: Value| d.socket_json(Method::POST, path, Some(body));
    let (status, other_set) = ask("/v1/admin/rotate", json!({"set": "partner", "now": true})).await;
    let (_, no_set) = ask("/v1/admin/rotate", json!({"set": "nope", "now": true})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{other_set}");
    assert_eq!(
        other_set["message"]
            .as_str()
            .unwrap()
            .replace("partner", "nope"),
        no_set["message"].as_str().unwrap()
    );
    let unknown_kid = partner_kid.replace("-v1-", "-v99-");
    let (status, other_kid) = ask("/v1/admin/revoke", json!({"kid": partner_kid})).await;
    let (_, no_kid) = ask("/v1/admin/revoke", json!({"kid": unknown_kid})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{other_kid}");
    assert_eq!(
        other_kid["message"]
            .as_str()
            .unwrap()
            .replace(&partner_kid, &unknown_kid),
        no_kid["message"].as_str().unwrap()
    );
    // Nothing changed in the other set.
    let (_, keys) = as_partner("GET", "/v1/keys", None).await.unwrap();
    let still = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == partner_kid.as_str());
    assert_eq!(still.unwrap()["state"], "active");

    // The audit trail: each admin reads its own set's records only.
    let of_set = |records: &Value, set: &str, client: &str| {
        records
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["kid"]
                    .as_str()
                    .is_some_and(|k| k.starts_with(&format!("{set}-")))
                    || r["client_id"] == client
            })
            .count()
    };
    let (status, mine) = d
        .socket_json(Method::GET, "/v1/audit?limit=100000", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .any(|r| r["jti"] == own["jti"]),
        "{mine}"
    );
    assert_eq!(of_set(&mine, "partner", "partner-app"), 0, "{mine}");
    let (status, theirs_read) = as_partner("GET", "/v1/audit?limit=100000", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{theirs_read}");
    let theirs_read = theirs_read.as_array().unwrap();
    assert!(theirs_read.iter().any(|r| r["jti"] == theirs["jti"]));
    // Nor the other admin's probes: they name no key of a set and no client.
    assert!(
        theirs_read.iter().all(|r| r["uid"] == PARTNER_ADMIN),
        "{theirs_read:?}"
    );
    // `limit` counts the records shown: the newest of this admin's sets.
    let (_, one) = d.socket_json(Method::GET, "/v1/audit?limit=1", None).await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["jti"], own["jti"], "{one}");
}
