//! Scale-out on PostgreSQL: several real daemons on one database.
//! Needs `JWKSD_TEST_POSTGRES_URL`; skipped with a message without it,
//! except in CI (`CI=true`), where a missing server fails.

mod helpers;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use helpers::pg::pg_or_skip;
use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection as _;

/// Fast schedule so that scheduled transitions happen within a test:
/// a rotation every 20 s, keys published 10 s ahead.
fn fast_policy() -> String {
    policy("")
        .replace("rotate_every = \"30d\"", "rotate_every = \"20s\"")
        .replace("publish_ahead = \"2d\"", "publish_ahead = \"10s\"")
        .replace("jwks_max_age = \"1h\"", "jwks_max_age = \"5s\"")
}

async fn leader_gauge(d: &Daemon) -> Option<i64> {
    let (_, _, body) = http(d.admin, Method::GET, "/metrics", &[]).await.ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with("jwksd_leader "))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// At most one active key per alg, straight from the database.
async fn db_actives(url: &str) -> Vec<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT alg, kid FROM keys WHERE state = 'active' ORDER BY alg")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let algs: HashSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(
        algs.len(),
        rows.len(),
        "two active keys for one alg: {rows:?}"
    );
    rows
}

/// Each replica's active kids agree with one per alg.
async fn replica_actives(d: &Daemon) -> Vec<(String, String)> {
    let (_, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    let mut rows: Vec<(String, String)> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["state"] == "active")
        .map(|k| {
            (
                k["alg"].as_str().unwrap().to_owned(),
                k["kid"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    let algs: HashSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(
        algs.len(),
        rows.len(),
        "replica shows two active keys for one alg: {rows:?}"
    );
    rows
}

async fn all_same_jwks(ds: &[&Daemon]) -> Option<bytes::Bytes> {
    let mut first = None;
    for d in ds {
        let (status, headers, body) = http(d.public, Method::GET, "/.well-known/jwks.json", &[])
            .await
            .ok()?;
        if status != StatusCode::OK {
            return None;
        }
        let etag = headers.get("etag")?.to_str().ok()?.to_owned();
        match &first {
            None => first = Some((body, etag)),
            Some((b, e)) if *b == body && *e == etag => {}
            Some(_) => return None,
        }
    }
    first.map(|(b, _)| b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_agree_follow_each_other_and_replace_a_killed_leader() {
    let Some(db) = pg_or_skip("replica tests").await else {
        return;
    };
    let started = Instant::now();
    // Spawned: the leader is killed (-9).
    let (_tmp, mut ds) = cluster(3, &fast_policy(), &db.url, Daemon::spawn_in);
    for d in &ds {
        d.ready().await;
    }
    // Identical JWKS (bytes and ETag) on every replica within 10 s of start.
    wait_for(
        "identical JWKS on three replicas",
        Duration::from_secs(10)
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1)),
        || async {
            all_same_jwks(&ds.iter().collect::<Vec<_>>())
                .await
                .is_some_and(|b| {
                    serde_json::from_slice::<Value>(&b).unwrap()["keys"]
                        .as_array()
                        .unwrap()
                        .len()
                        == 4
                })
        },
    )
    .await;
    // Exactly one leader.
    let mut gauges = Vec::new();
    for d in &ds {
        gauges.push(leader_gauge(d).await.unwrap());
    }
    assert_eq!(gauges.iter().sum::<i64>(), 1, "leader gauges {gauges:?}");
    db_actives(&db.url).await;

    // A rotation on a replica that is not the leader is served by all within 6 s.
    let follower = gauges.iter().position(|g| *g == 0).unwrap();
    let (status, answer) = ds[follower]
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "ES384", "now": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let activated = answer["activated"].as_str().unwrap().to_owned();
    let rotated = Instant::now();
    wait_for(
        "the rotation on every replica",
        Duration::from_secs(6),
        || async {
            let refs: Vec<&Daemon> = ds.iter().collect();
            let Some(body) = all_same_jwks(&refs).await else {
                return false;
            };
            let text = String::from_utf8_lossy(&body).to_string();
            let mut all = true;
            for d in &ds {
                all &= replica_actives(d)
                    .await
                    .iter()
                    .any(|(_, k)| *k == activated);
            }
            all && text.contains(&activated)
                && answer["pending"].as_str().is_some_and(|p| text.contains(p))
        },
    )
    .await;
    assert!(rotated.elapsed() <= Duration::from_secs(6));
    for d in &ds {
        assert_eq!(d.assertion("ES384").await["kid"], activated.as_str());
    }

    // Kill -9 the leader: another replica takes the lease (<= 30 s) and runs
    // the next scheduled activation; never two signers, seen from the
    // database and from every replica.
    let leader = {
        let mut l = None;
        for (i, d) in ds.iter().enumerate() {
            if leader_gauge(d).await == Some(1) {
                l = Some(i);
            }
        }
        l.unwrap()
    };
    let before = db_actives(&db.url).await;
    ds[leader].kill9();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let killed = Instant::now();
    let mut new_leader = None;
    while new_leader.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no replica took over within 30 s"
        );
        for &i in &survivors {
            if leader_gauge(&ds[i]).await == Some(1) {
                new_leader = Some(i);
            }
        }
        db_actives(&db.url).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A scheduled rotation (every 20 s) happens under the new leader.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = db_actives(&db.url).await;
        for &i in &survivors {
            replica_actives(&ds[i]).await;
        }
        if now.iter().all(|a| !before.contains(a)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled rotation after the leader died: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refs: Vec<&Daemon> = survivors.iter().map(|&i| &ds[i]).collect();
    wait_for(
        "survivors agree after the scheduled rotation",
        Duration::from_secs(6),
        || async { all_same_jwks(&refs).await.is_some() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_database_keeps_jwks_and_signing_and_everything_recovers() {
    let Some(db) = pg_or_skip("replica tests").await else {
        return;
    };
    let (_tmp, ds) = cluster(2, &policy(""), &db.url, Daemon::start_in);
    for d in &ds {
        d.ready().await;
        d.settled().await;
    }
    let (_, _, jwks_before) = ds[0].jwks().await;
    db.block(true).await;

    // JWKS and signing go on from memory; readiness says the store is down.
    let mut signed_while_down = 0;
    for d in &ds {
        let (status, _, body) = d.jwks().await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, jwks_before);
        for alg in ["RS384", "ES384"] {
            let jwt = d.assertion(alg).await["assertion"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(verify_with_jwks(
                &jwt,
                &serde_json::from_slice(&body).unwrap()
            ));
            signed_while_down += 1;
        }
    }
    wait_for(
        "readyz to report the store down",
        Duration::from_secs(15),
        || async {
            matches!(
                http(ds[0].admin, Method::GET, "/readyz", &[]).await,
                Ok((StatusCode::SERVICE_UNAVAILABLE, _, _))
            )
        },
    )
    .await;
    let (_, _, why) = http(ds[0].admin, Method::GET, "/readyz", &[])
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&why).contains("store"), "{why:?}");

    db.block(false).await;
    for d in &ds {
        wait_for(
            "readyz after the store returns",
            Duration::from_secs(20),
            || async {
                matches!(
                    http(d.admin, Method::GET, "/readyz", &[]).await,
                    Ok((StatusCode::OK, _, _))
                )
            },
        )
        .await;
    }
    // Nothing lost: the signatures made while the store was down reach the
    // audit chain, which verifies.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    wait_for(
        "spooled audit records in the store",
        Duration::from_secs(20),
        || {
            let url = db.url.clone();
            async move {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM audit WHERE action = 'sign' AND outcome = 'ok'",
                )
                .fetch_one(&mut c)
                .await
                .unwrap();
                n >= signed_while_down
            }
        },
    )
    .await;
    let (status, verify) = ds[0]
        .socket_json(Method::GET, "/v1/audit/verify", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verify["ok"], true, "{verify}");
    // Transitions resume.
    let (status, answer) = ds[1]
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "RS384", "now": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM keys WHERE state = 'active'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2);
}
