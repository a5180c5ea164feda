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
