//! `[[callers]] gid`/`group` grants match the caller's supplementary
//! groups too (SO_PEERGROUPS), as the socket file's mode already does: the
//! usual way to let an app in is `usermod -aG GROUP app`. Callers run as
//! other users through `setpriv` (needs root: prints SKIPPED otherwise).

mod helpers;

use helpers::*;
use serde_json::{Value, json};

/// The app's own uid and primary group: in no grant.
const APP: u32 = 4242;
/// The group a grant names: the app has it only as a supplementary group.
const GRANTED: u32 = 4343;
/// `nogroup`: owns the socket file, so every caller here can connect.
const SOCKET_GROUP: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_grant_matches_a_supplementary_group_and_the_record_shows_the_groups() {
    if !can_run_callers_as_others("supplementary groups") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let grant = format!("\n[[callers]]\ngid = {GRANTED}\nclients = [\"other-app\"]\n");
    write_files(tmp.path(), &policy(&grant));
    open_socket_to_group(tmp.path(), SOCKET_GROUP);
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    let body = json!({"client_id": "other-app", "audience": AUD, "alg": "ES384"}).to_string();
    let ask = |groups: &'static [u32]| {
        let who = As {
            uid: APP,
            gid: APP,
            groups,
        };
        let socket = d.socket.clone();
        let body = body.clone();
        move || curl_as(&socket, &who, "POST", "/v1/assertions", Some(&body), 1).remove(0)
    };

    // The granted group as a supplementary group only: signed.
    let (status, answer) = tokio::task::spawn_blocking(ask(&[GRANTED, SOCKET_GROUP]))
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let jti = answer["jti"].as_str().unwrap().to_owned();

    // The same app without that group reaches the socket, and is refused
    // by the daemon.
    let (status, answer) = tokio::task::spawn_blocking(ask(&[SOCKET_GROUP]))
        .await
        .unwrap();
    assert_eq!(status, 403, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["error"], "forbidden");

    // The audit trail shows which groups the peer had.
    let (_, records) = d
        .socket_json(hyper::Method::GET, "/v1/audit?limit=1000", None)
        .await;
    let records = records.as_array().unwrap();
    let signed = records
        .iter()
        .find(|r| r["jti"] == jti.as_str())
        .expect("the signature is audited");
    assert_eq!(signed["outcome"], "ok");
    assert_eq!(
        (signed["uid"].clone(), signed["gid"].clone()),
        (APP.into(), APP.into())
    );
    assert_eq!(
        signed["detail"],
        format!("groups {GRANTED},{SOCKET_GROUP}"),
        "{signed}"
    );
    let refused = records
        .iter()
        .find(|r| r["uid"] == APP && r["outcome"] == "forbidden")
        .expect("the refusal is audited");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .ends_with(&format!("; groups {SOCKET_GROUP}")),
        "{refused}"
    );
}
