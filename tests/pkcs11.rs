//! The whole lifecycle with private halves in a PKCS#11 token (DESIGN §5),
//! on a real SoftHSM token that each test creates in its own directory
//! (`SOFTHSM2_CONF`), with the real daemon as a child process: bootstrap,
//! assertions verified by an independent implementation (RustCrypto)
//! against the JWKS, `rotate --now`, `revoke`, restart, a scheduled
//! rotation with pre-publication, kill -9 during generation and orphan
//! cleanup, and a token that goes away and comes back. After each change
//! the token's private objects are exactly the keys that may sign (counted
//! through `jwksd backend objects`, a process of its own), and the store
//! holds no key bytes.
//!
//! Skipped with a message where SoftHSM is not installed; under `CI=true`
//! (`.ci/run` installs it) that is a failure instead.

mod helpers;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use helpers::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Distinctive, so that finding it anywhere (log, store, audit) means a leak.
const PIN: &str = "pin-Zq7xK2wV9";
const SO_PIN: &str = "so-pin-4b8Tm1";

/// A SoftHSM token of its own: the config file every process that uses it
/// gets as `SOFTHSM2_CONF`.
struct SoftHsm {
    conf: PathBuf,
    tokens: PathBuf,
}

impl SoftHsm {
    /// A fresh token labelled `jwksd` under `dir`, or `None` (test skipped)
    /// where SoftHSM is not installed.
    fn new(dir: &Path) -> Option<SoftHsm> {
        if !Path::new(MODULE).exists() || which("softhsm2-util").is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "SoftHSM is not installed but CI=true: .ci/run installs softhsm2"
            );
            eprintln!("SKIPPED: softhsm2 not installed (Debian package softhsm2)");
            return None;
        }
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = SoftHsm { conf, tokens };
        let out = hsm
            .util()
            .args([
                "--init-token",
                "--free",
                "--label",
                "jwksd",
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(hsm)
    }

    fn util(&self) -> Command {
        let mut c = Command::new("softhsm2-util");
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("SOFTHSM2_CONF", self.conf.display().to_string())]
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.exists())
    })
}

/// `policy(...)` on the token, with `orphan_grace` short enough for a test.
fn hsm_policy(extra: &str) -> String {
    policy(extra).replacen("rsa_bits = 2048", "rsa_bits = 2048\nbackend = \"hsm\"", 1)
}

/// The usual test files plus a `[backends.hsm]` table and its PIN file.
fn write_hsm_files(dir: &Path, policy: &str) {
    write_files(dir, policy);
    add_hsm_backend(dir);
}

/// Adds a `[backends.hsm]` table and its PIN file (0600) to `dir`'s files.
fn add_hsm_backend(dir: &Path) {
    let config = dir.join("jwksd.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[backends.hsm]\nkind = \"pkcs11\"\nmodule = \"{MODULE}\"\ntoken_label = \"jwksd\"\npin_file = \"hsm.pin\"\nsessions = 2\norphan_grace = \"3s\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let pin = dir.join("hsm.pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn spawn(dir: &Path, hsm: &SoftHsm) -> Daemon {
    let env = hsm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Daemon::spawn_in_with_env(dir, &[], &env)
}

/// `jwksd backend objects --json`, run as a process of its own.
fn objects(dir: &Path, hsm: &SoftHsm) -> Vec<Value> {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("jwksd.toml"))
        .args(["backend", "objects", "--json"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backend objects: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn labels(objects: &[Value], class: &str) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| o["class"] == class)
        .map(|o| o["label"].as_str().unwrap().to_owned())
        .collect()
}

fn kids_in(keys: &[Value], states: &[&str]) -> BTreeSet<String> {
    keys.iter()
        .filter(|k| states.contains(&k["state"].as_str().unwrap()))
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn keys(d: &Daemon) -> Vec<Value> {
    let (status, keys) = d.socket_json(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    keys.as_array().unwrap().clone()
}

/// The token holds a private (and a public) object for exactly the keys
/// that may sign, and nothing else of jwksd's.
async fn token_matches_the_store(d: &Daemon, dir: &Path, hsm: &SoftHsm, what: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        let live = kids_in(&keys(d).await, &["pending", "active"]);
        let objects = objects(dir, hsm);
        let (private, public) = (labels(&objects, "private"), labels(&objects, "public"));
        if private == live && public == live {
            return;
        }
        last = format!("live {live:?}\nprivate {private:?}\npublic {public:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: the token's objects are not the live keys:\n{last}");
}

/// An assertion of `alg`, checked with RustCrypto against the served JWKS.
async fn verified_assertion(d: &Daemon, alg: &str) -> String {
    let answer = d.assertion(alg).await;
    let jwt = answer["assertion"].as_str().unwrap();
    let (_, _, body) = d.jwks().await;
    let jwks: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        verify_with_jwks(jwt, &jwks),
        "{alg} assertion from the token does not verify against the JWKS"
    );
    answer["kid"].as_str().unwrap().to_owned()
}

fn active_kid(keys: &[Value], alg: &str) -> String {
    keys.iter()
        .find(|k| k["alg"] == alg && k["state"] == "active")
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no active {alg} key in {keys:?}"))
}

/// No key bytes in the store: no sealed blob at all, and a reference
/// (the kid) exactly for the keys that may sign.
fn store_holds_no_key_bytes(dir: &Path) {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("jwksd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut q = db
        .prepare("SELECT kid, state, backend, backend_ref, sealed_private IS NULL FROM keys")
        .unwrap();
    let rows: Vec<(String, String, String, Option<String>, bool)> = q
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!rows.is_empty());
    for (kid, state, backend, backend_ref, no_blob) in rows {
        assert!(no_blob, "{kid}: a sealed private half in the store");
        assert_eq!(backend, "hsm", "{kid}");
        let may_sign = state == "pending" || state == "active";
        assert_eq!(
            backend_ref.as_deref(),
            may_sign.then_some(kid.as_str()),
            "{kid} ({state})"
        );
    }
}

/// No PIN anywhere it could leak to.
fn pin_nowhere(dir: &Path) {
    for file in [
        "daemon.log",
        "jwksd.db",
        "jwksd.db-wal",
        "audit-spool.jsonl",
    ] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            assert!(
                !bytes.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
                "the PIN is in {file}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_runs_on_a_token_and_deactivated_keys_leave_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(hsm) = SoftHsm::new(dir) else { return };
    write_hsm_files(dir, &hsm_policy(""));

    // Bootstrap: an active and a pending key per alg, all in the token.
    let mut d = spawn(dir, &hsm).when_settled().await;
    let listed = keys(&d).await;
    assert!(listed.iter().all(|k| k["backend"] == "hsm"), "{listed:?}");
    token_matches_the_store(&d, dir, &hsm, "after bootstrap").await;
    for object in objects(dir, &hsm)
        .iter()
        .filter(|o| o["class"] == "private")
    {
        assert_eq!(object["sensitive"], true, "{object}");
        assert_eq!(object["extractable"], false, "{object}");
        assert_eq!(object["never_extractable"], true, "{object}");
        assert_eq!(object["always_sensitive"], true, "{object}");
    }
    for alg in ["RS384", "ES384"] {
        assert_eq!(verified_assertion(&d, alg).await, active_kid(&listed, alg));
    }
    store_holds_no_key_bytes(dir);

    // rotate --now: the old signer's private object is destroyed.
    let old_rs = active_kid(&listed, "RS384");
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "RS384", "now": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["deactivated"], old_rs.as_str());
    // Destroyed once every replica has followed (10 s), not before.
    token_matches_the_store(&d, dir, &hsm, "after rotate --now").await;
    assert_eq!(
        verified_assertion(&d, "RS384").await,
        answer["activated"].as_str().unwrap()
    );

    // revoke the active ES384 key: gone from the JWKS and from the token.
    let old_es = active_kid(&keys(&d).await, "ES384");
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/admin/revoke",
            Some(json!({"kid": old_es})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    token_matches_the_store(&d, dir, &hsm, "after revoke").await;
    let (_, _, jwks) = d.jwks().await;
    assert!(!String::from_utf8_lossy(&jwks).contains(&old_es));
    verified_assertion(&d, "ES384").await;
    store_holds_no_key_bytes(dir);

    // Restart: the same objects sign again, nothing is regenerated.
    let before = kids_in(&keys(&d).await, &["pending", "active"]);
    assert!(d.stop(), "clean stop: {}", d.log());
    let d = spawn(dir, &hsm).when_settled().await;
    assert_eq!(kids_in(&keys(&d).await, &["pending", "active"]), before);
    for alg in ["RS384", "ES384"] {
        verified_assertion(&d, alg).await;
    }
    token_matches_the_store(&d, dir, &hsm, "after restart").await;
    let out = d.cli(&["keys", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("BACKEND") && table.contains(" hsm "),
        "{table}"
    );
    pin_nowhere(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rotation_on_a_token_prepublishes_then_destroys_the_old_signer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(hsm) = SoftHsm::new(dir) else { return };
    // A schedule of seconds on the real clock: the daemon is a real
    // process, and the lifecycle rules are the same at any scale.
    let short = hsm_policy("")
        .replace("rotate_every = \"30d\"", "rotate_every = \"20s\"")
        .replace("publish_ahead = \"2d\"", "publish_ahead = \"3s\"")
        .replace("jwks_max_age = \"1h\"", "jwks_max_age = \"2s\"")
        .replace("assertion_lifetime = \"5m\"", "assertion_lifetime = \"2s\"")
        .replace("clock_skew = \"1m\"", "clock_skew = \"1s\"")
        .replace("grace = \"7d\"", "grace = \"6s\"");
    write_hsm_files(dir, &short);
    let d = spawn(dir, &hsm).when_settled().await;
    let first = keys(&d).await;
    let first_rs = active_kid(&first, "RS384");
    let successor = first
        .iter()
        .find(|k| k["alg"] == "RS384" && k["state"] == "pending")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Pre-publication: the successor is in the JWKS before it signs.
    let (_, _, jwks) = d.jwks().await;
    assert!(String::from_utf8_lossy(&jwks).contains(&successor));

    wait_for(
        "the scheduled rotation",
        Duration::from_secs(40),
        || async { active_kid(&keys(&d).await, "RS384") == successor },
    )
    .await;
    let now = keys(&d).await;
    let signer = now.iter().find(|k| k["kid"] == successor.as_str()).unwrap();
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(signer[field].as_str().unwrap()).unwrap()
    };
    assert!(
        at("activate_at") - at("publish_at") >= chrono::Duration::seconds(3),
        "activated before publish_ahead: {signer}"
    );
    token_matches_the_store(&d, dir, &hsm, "after a scheduled rotation").await;
    assert!(!labels(&objects(dir, &hsm), "private").contains(&first_rs));
    assert_eq!(verified_assertion(&d, "RS384").await, successor);
    assert!(
        !d.log().contains("rotate --now"),
        "a scheduled rotation, not an emergency"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_generation_leaves_no_orphan_behind_after_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(hsm) = SoftHsm::new(dir) else { return };
    // RSA-4096 in SoftHSM takes seconds: room to kill the daemon mid-way.
    write_hsm_files(
        dir,
        &hsm_policy("").replace("rsa_bits = 2048", "rsa_bits = 4096"),
    );
    let mut d = spawn(dir, &hsm).when_settled().await;
    let socket = d.socket.clone();
    // rotate --now generates the RS384 successor before it answers.
    let rotate = tokio::spawn(async move {
        socket_try(
            &socket,
            Method::POST,
            "/v1/admin/rotate",
            json!({"set": "default", "alg": "RS384", "now": true})
                .to_string()
                .into_bytes(),
            Duration::from_secs(30),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    d.kill9();
    let _ = rotate.await;

    // What a crash between generating in the token and recording can
    // leave: an object under a temporary label (made here by hand, so the
    // test does not depend on where the kill landed).
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .unwrap()
        .serialize_pem();
    let pem_file = dir.join("orphan.pem");
    std::fs::write(&pem_file, pem).unwrap();
    let out = hsm
        .util()
        .args(["--import"])
        .arg(&pem_file)
        .args(["--token", "jwksd", "--label", "jwksd-new-00000000deadbeef"])
        // CKA_ID = the label's bytes, as jwksd labels its objects.
        .args(["--id", &hex("jwksd-new-00000000deadbeef"), "--pin", PIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And another application's key, which jwksd must leave alone.
    let before_foreign = object_files(&hsm.tokens);
    let out = hsm
        .util()
        .args(["--import"])
        .arg(&pem_file)
        .args([
            "--token",
            "jwksd",
            "--label",
            "other-app-key",
            "--id",
            "0102",
            "--pin",
            PIN,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let foreign = object_files(&hsm.tokens) - before_foreign;
    assert!(foreign >= 1);
    assert!(labels(&objects(dir, &hsm), "private").contains("jwksd-new-00000000deadbeef"));

    let d = spawn(dir, &hsm).when_settled().await;
    token_matches_the_store(&d, dir, &hsm, "after the orphan grace").await;
    assert!(d.log().contains("orphan key object"), "{}", d.log());
    for alg in ["RS384", "ES384"] {
        verified_assertion(&d, alg).await;
    }
    // The foreign object is still there: SoftHSM keeps one file per
    // object, and `backend objects` lists jwksd's objects only.
    let live = kids_in(&keys(&d).await, &["pending", "active"]).len();
    assert_eq!(object_files(&hsm.tokens), 2 * live + foreign);
    let audit = d.cli(&["audit", "tail", "-n", "200", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("\"action\":\"destroy\"") && audit.contains("jwksd-new-00000000deadbeef"),
        "the orphan's destruction is audited: {audit}"
    );
    pin_nowhere(dir);
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// SoftHSM's object files (one per object) in every token under `tokens`,
/// without each token's own `token.object`.
fn object_files(tokens: &Path) -> usize {
    std::fs::read_dir(tokens)
        .unwrap()
        .flat_map(|token| std::fs::read_dir(token.unwrap().path()).unwrap())
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "object")
                // The token's own data, not an object.
                && f.as_ref().unwrap().file_name() != "token.object"
        })
        .count()
}

/// A token that goes away under load and comes back, once with a PIN file
/// that no longer matches: no crash, 503s that say what is wrong while it
/// is gone, the JWKS served throughout, `/readyz` naming the backend, and
/// signing resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_goes_away_gives_clear_503s_and_signing_resumes_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(hsm) = SoftHsm::new(dir) else { return };
    write_hsm_files(dir, &hsm_policy(""));
    // A second set, on software keys, beside the token's.
    let soft = policy("")
        .replacen("name = \"default\"", "name = \"soft\"", 1)
        .replace("client_id = \"app\"", "client_id = \"soft-app\"")
        .replace("client_id = \"other-app\"", "client_id = \"soft-other\"")
        .replace("clients = [\"app\"]", "clients = [\"soft-app\"]");
    std::fs::write(dir.join("policies/soft.toml"), soft).unwrap();
    let d = spawn(dir, &hsm);
    d.ready().await;
    for alg in ["RS384", "ES384"] {
        verified_assertion(&d, alg).await;
    }
    let sign = |alg: &'static str| {
        let d = &d;
        async move {
            d.socket_json(
                Method::POST,
                "/v1/assertions",
                Some(json!({"client_id": "app", "audience": AUD, "alg": alg})),
            )
            .await
        }
    };

    // The token's storage goes away (SoftHSM: its directory).
    let away = dir.join("tokens-away");
    std::fs::rename(&hsm.tokens, &away).unwrap();
    for alg in ["RS384", "ES384"] {
        let (status, answer) = sign(alg).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(answer["error"], "unavailable", "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains("backend \"hsm\""), "{message}");
        assert!(
            message.contains("signing resumes once it is back"),
            "{message}"
        );
    }
    let (status, _, _) = d.jwks().await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the JWKS is served while the token is gone"
    );
    // Lifecycle work goes on: rotate --now of the token's set activates its
    // pre-published key (the successor waits for the token), and the
    // software set rotates and signs as ever.
    for set in ["default", "soft"] {
        let (status, answer) = d
            .socket_json(
                Method::POST,
                "/v1/admin/rotate",
                Some(json!({"set": set, "alg": "ES384", "now": true})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "rotate --now {set}: {answer}");
    }
    let (status, answer) = d
        .socket_json(
            Method::POST,
            "/v1/assertions",
            Some(json!({"client_id": "soft-app", "audience": AUD, "alg": "ES384"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the software set signs: {answer}");
    wait_for(
        "/readyz to name the backend",
        Duration::from_secs(10),
        || async {
            let (status, _, body) = http(d.admin, Method::GET, "/readyz", &[]).await.unwrap();
            status == StatusCode::SERVICE_UNAVAILABLE
                && String::from_utf8_lossy(&body).contains("backend hsm is down since")
        },
    )
    .await;

    // It comes back, but the PIN file now holds a PIN the token refuses.
    let pin = dir.join("hsm.pin");
    std::fs::write(&pin, "not-the-pin\n").unwrap();
    std::fs::rename(&away, &hsm.tokens).unwrap();
    wait_for(
        "the refused login on /readyz",
        Duration::from_secs(15),
        || async {
            let (_, _, body) = http(d.admin, Method::GET, "/readyz", &[]).await.unwrap();
            String::from_utf8_lossy(&body).contains("CKR_PIN_INCORRECT")
        },
    )
    .await;
    let (status, answer) = sign("ES384").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("CKR_PIN_INCORRECT"),
        "{answer}"
    );

    // The operator fixes the PIN file: signing resumes with no restart.
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    wait_for("signing to resume", Duration::from_secs(15), || async {
        sign("RS384").await.0 == StatusCode::OK
    })
    .await;
    for alg in ["RS384", "ES384"] {
        verified_assertion(&d, alg).await;
    }
    d.ready().await;
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("key backend connected and logged in"), "{log}");
    pin_nowhere(dir);
}

/// Two replicas on one PostgreSQL and one token: one generates, both sign
/// with the same objects, and a rotation made on one is signed with on the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_and_one_token_share_its_keys() {
    let Some(pg) = helpers::pg::pg_or_skip("pkcs11 replicas").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(hsm) = SoftHsm::new(tmp.path()) else {
        return;
    };
    let key = random_master_key();
    let replicas: Vec<Daemon> = (0..2)
        .map(|i| {
            let dir = tmp.path().join(format!("replica{i}"));
            write_files_with(&dir, &hsm_policy(""), &pg.url, &key);
            add_hsm_backend(&dir);
            spawn(&dir, &hsm)
        })
        .collect();
    for d in &replicas {
        d.ready().await;
    }
    replicas[0].settled().await;
    let dir0 = tmp.path().join("replica0");
    token_matches_the_store(&replicas[0], &dir0, &hsm, "two replicas bootstrapped").await;
    let listed = keys(&replicas[0]).await;
    for alg in ["RS384", "ES384"] {
        let active = active_kid(&listed, alg);
        for d in &replicas {
            assert_eq!(verified_assertion(d, alg).await, active);
        }
    }
    let (status, answer) = replicas[1]
        .socket_json(
            Method::POST,
            "/v1/admin/rotate",
            Some(json!({"set": "default", "alg": "ES384", "now": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let new = answer["activated"].as_str().unwrap().to_owned();
    // Replica 0 signs throughout: with the old key until it follows the
    // change, then with the new one; never a 503 for a destroyed object.
    let until = std::time::Instant::now() + Duration::from_secs(12);
    let mut kids = BTreeSet::new();
    while std::time::Instant::now() < until {
        let answer = replicas[0].assertion("ES384").await;
        kids.insert(answer["kid"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        kids.contains(&new),
        "replica 0 never signed with {new}: {kids:?}"
    );
    assert_eq!(verified_assertion(&replicas[0], "ES384").await, new);
    token_matches_the_store(&replicas[0], &dir0, &hsm, "after a rotation on replica 1").await;
}

/// The PIN from `JWKSD_PKCS11_PIN` instead of a file: the daemon logs in
/// with it, and it is gone from the process's environment
/// (`/proc/PID/environ`, which a removed variable would leave as it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_from_the_environment_logs_in_and_is_scrubbed_from_proc_environ() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(hsm) = SoftHsm::new(dir) else { return };
    write_hsm_files(dir, &hsm_policy(""));
    let config = dir.join("jwksd.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("pin_file = \"hsm.pin\"\n", "");
    std::fs::write(&config, text).unwrap();
    std::fs::remove_file(dir.join("hsm.pin")).unwrap();
    let conf = hsm.conf.display().to_string();
    let d = Daemon::spawn_in_with_env(
        dir,
        &[],
        &[("SOFTHSM2_CONF", conf.as_str()), ("JWKSD_PKCS11_PIN", PIN)],
    )
    .when_settled()
    .await;
    for alg in ["RS384", "ES384"] {
        verified_assertion(&d, alg).await;
    }
    let environ = std::fs::read(format!("/proc/{}/environ", d.pid())).unwrap();
    assert!(
        !environ.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
        "the PIN is still in /proc/PID/environ"
    );
    assert!(
        String::from_utf8_lossy(&environ).contains("SOFTHSM2_CONF="),
        "environ was read"
    );
    pin_nowhere(dir);
}
