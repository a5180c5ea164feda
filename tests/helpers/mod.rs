//! Test helpers: start the real daemon on port 0 and a temporary socket,
//! in this process (`Daemon::start*`) or as the `jwksd` binary
//! (`Daemon::spawn*`, where a test needs a process: signals, kill -9,
//! command-line flags, its environment, its limits), talk to it over real
//! HTTP and the real Unix socket, and verify what it signs with independent
//! implementations (`rsa`, `p384`).

#![allow(dead_code)]

mod in_process;
pub mod pg;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use p384::ecdsa::signature::Verifier as _;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_jwksd");
pub const AUD: &str = "https://ehr.example.com/oauth2/token";

/// This process's uid and gid: the daemon sees them through SO_PEERCRED.
pub fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// `--allow-root` when the tests run as root (as in CI): the daemon refuses
/// root otherwise.
pub fn allow_root() -> Vec<&'static str> {
    if nix::unistd::geteuid().is_root() {
        vec!["--allow-root"]
    } else {
        Vec::new()
    }
}

/// A policy whose callers are this test process (admin) for client `app`.
/// RSA 2048 keeps generation fast; the 4096 default is tested elsewhere.
pub fn policy(extra: &str) -> String {
    format!(
        r#"name = "default"
algorithms = ["RS384", "ES384"]
rsa_bits = 2048
rotate_every = "30d"
publish_ahead = "2d"
grace = "7d"
jwks_max_age = "1h"
assertion_lifetime = "5m"
clock_skew = "1m"

[[clients]]
client_id = "app"
audiences = ["{AUD}"]
jku = true

[[clients]]
client_id = "other-app"
audiences = ["{AUD}"]

[[callers]]
uid = {uid}
clients = ["app"]
admin = true
{extra}"#,
        uid = my_uid()
    )
}

/// A running daemon in its own temporary directory: in this process or a
/// child process, with the same files, log file and methods either way.
pub struct Daemon {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    running: Option<Running>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// What a spawned daemon printed on stdout so far, line by line (empty
    /// for a daemon in this process).
    stdout: Arc<Mutex<Vec<String>>>,
}

/// How a daemon runs, until it is stopped or killed.
enum Running {
    InProcess(in_process::InProcess),
    Spawned(Child),
}

impl Daemon {
    /// Writes config, master key and `policy` into a fresh directory and
    /// starts the daemon there, in this process.
    pub fn start(policy: &str) -> Daemon {
        Daemon::fresh(policy, Daemon::start_in)
    }

    /// Starts the daemon in this process on the files already in `dir` (a
    /// restart).
    pub fn start_in(dir: &Path) -> Daemon {
        let config = dir.join("jwksd.toml");
        let (daemon, bound) = in_process::InProcess::start(&config, &dir.join("daemon.log"))
            .unwrap_or_else(|e| panic!("daemon did not start: {e}\n{}", read_log(dir)));
        Daemon {
            dir: dir.to_path_buf(),
            _tmp: None,
            running: Some(Running::InProcess(daemon)),
            public: bound.public,
            admin: bound.admin,
            socket: bound.socket,
            config,
            stdout: Arc::default(),
        }
    }

    /// Like `start`, as a child process running `jwksd serve`.
    pub fn spawn(policy: &str) -> Daemon {
        Daemon::fresh(policy, Daemon::spawn_in)
    }

    /// Like `start_in`, as a child process running `jwksd serve`.
    pub fn spawn_in(dir: &Path) -> Daemon {
        Daemon::spawn_in_with_env(dir, &[], &[])
    }

    /// Like `spawn`, with extra command-line arguments.
    pub fn spawn_with(policy: &str, args: &[&str]) -> Daemon {
        Daemon::fresh(policy, |dir| Daemon::spawn_in_with_env(dir, args, &[]))
    }

    /// `spawn_in` with extra arguments and environment variables.
    pub fn spawn_in_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let config = dir.join("jwksd.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .args(allow_root())
            .args(args)
            .env_remove("JWKSD_MASTER_KEY")
            .envs(env.iter().copied())
            .env("RUST_LOG", in_process::LOG_FILTER)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let printed: Arc<Mutex<Vec<String>>> = Arc::default();
        let keep = printed.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
            for line in lines.map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("daemon did not start: {}", read_log(dir)));
        // The first line says where it listens: `public=ADDR admin=ADDR
        // socket=PATH`, or with --log-format json one object with those
        // fields.
        let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let field = |name: &str| -> String {
            match &json {
                Some(v) => v["fields"][name].as_str().map(str::to_owned),
                None => line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .map(str::to_owned),
            }
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        Daemon {
            dir: dir.to_path_buf(),
            _tmp: None,
            running: Some(Running::Spawned(child)),
            public: field("public").parse().unwrap(),
            admin: field("admin").parse().unwrap(),
            socket: PathBuf::from(field("socket")),
            config,
            stdout: printed,
        }
    }

    /// Writes the files of `policy` into a fresh temporary directory, which
    /// the daemon `start` starts there then owns.
    fn fresh(policy: &str, start: impl FnOnce(&Path) -> Daemon) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        write_files(tmp.path(), policy);
        let mut d = start(tmp.path());
        d._tmp = Some(tmp);
        d
    }

    /// Waits until `/readyz` says every set has its signers.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((StatusCode::OK, _, _)) = http(self.admin, Method::GET, "/readyz", &[]).await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon never ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the set has an active key and a pending successor per alg.
    pub async fn settled(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, keys) = self.socket_json(Method::GET, "/v1/keys", None).await;
            assert_eq!(status, StatusCode::OK, "{keys}");
            let keys = keys.as_array().unwrap().clone();
            let count = |state: &str| keys.iter().filter(|k| k["state"] == state).count();
            if count("active") == 2 && count("pending") == 2 {
                return keys;
            }
            assert!(Instant::now() < deadline, "keys never settled: {keys:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ready`, then `settled`: the daemon back, serving with an active and
    /// a pending key per alg.
    pub async fn when_settled(self) -> Daemon {
        self.ready().await;
        self.settled().await;
        self
    }

    /// Takes ownership of the temporary directory, so that it outlives this
    /// daemon (for restarts on the same files).
    pub fn keep_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// What a spawned daemon printed on stdout so far, line by line.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// SIGKILL: no cleanup at all, as after a crash. Needs a process.
    pub fn kill9(&mut self) {
        self.needs_a_process("kill9");
        self.end();
    }

    /// A clean stop (SIGTERM for a process, the shutdown token in this
    /// one); returns whether the daemon ended without an error within 20 s.
    pub fn stop(&mut self) -> bool {
        let within = Duration::from_secs(20);
        match self.running.take() {
            None => false,
            Some(Running::InProcess(d)) => d.stop(within),
            Some(Running::Spawned(mut c)) => {
                let _ = signal(&c, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + within;
                loop {
                    if let Ok(Some(status)) = c.try_wait() {
                        return status.success();
                    }
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Re-reads policies and the TLS certificate: SIGHUP for a process, the
    /// channel SIGHUP feeds in this one.
    pub fn reload(&self) {
        match &self.running {
            Some(Running::Spawned(c)) => signal(c, nix::sys::signal::Signal::SIGHUP).unwrap(),
            Some(Running::InProcess(d)) => d.reload(),
            None => panic!("reload: the daemon is not running"),
        }
    }

    /// The daemon's pid (0 once it has ended). Needs a process.
    pub fn pid(&self) -> i32 {
        self.needs_a_process("pid");
        self.running.as_ref().map_or(0, |r| match r {
            Running::Spawned(c) => c.id() as i32,
            Running::InProcess(_) => unreachable!(),
        })
    }

    fn needs_a_process(&self, what: &str) {
        assert!(
            !matches!(self.running, Some(Running::InProcess(_))),
            "{what}: this daemon runs in the test process; start it with Daemon::spawn*"
        );
    }

    /// A process is killed (-9); a daemon in this process is dropped where
    /// it stands and its thread joined.
    fn end(&mut self) {
        match self.running.take() {
            Some(Running::Spawned(mut c)) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Some(Running::InProcess(d)) => drop(d),
            None => {}
        }
    }

    pub async fn jwks(&self) -> (StatusCode, HeaderMap, Bytes) {
        http(self.public, Method::GET, "/.well-known/jwks.json", &[])
            .await
            .unwrap()
    }

    /// A raw socket request.
    pub async fn socket_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let (status, _, body) = send(stream, method, path, &[], body).await.unwrap();
        (status, body)
    }

    /// A JSON socket request.
    pub async fn socket_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, body) = self.socket_raw(method, path, bytes).await;
        let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, value)
    }

    /// Asks for an assertion; panics unless it is granted.
    pub async fn assertion(&self, alg: &str) -> Value {
        let (status, answer) = self
            .socket_json(
                Method::POST,
                "/v1/assertions",
                Some(serde_json::json!({"client_id": "app", "audience": AUD, "alg": alg})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.end();
    }
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
}

/// Polls `f` (every 200 ms) until it holds; fails the test after `within`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// The config, a fresh master key (0600) and the policy, on SQLite.
pub fn write_files(dir: &Path, policy: &str) {
    let mut key = [0u8; 32];
    getrandom_fill(&mut key);
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    write_files_with(dir, policy, "sqlite://jwksd.db", &key);
}

/// The config (with `store_url`), the given master key (0600) and the policy.
pub fn write_files_with(dir: &Path, policy: &str, store_url: &str, master_key_b64: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("jwksd.toml"),
        format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080/"
socket = "jwksd.sock"

[store]
url = "{store_url}"
audit_spool = "audit-spool.jsonl"

[seal]
master_key_file = "master.key"

[policies]
dir = "policies"
"#
        ),
    )
    .unwrap();
    let key_path = dir.join("master.key");
    std::fs::write(&key_path, format!("{master_key_b64}\n")).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("policies/default.toml"), policy).unwrap();
    // The daemon refuses a config or policy that group or others may
    // write: whatever the umask of whoever runs the tests.
    for (path, mode) in [
        ("jwksd.toml", 0o644),
        ("policies", 0o755),
        ("policies/default.toml", 0o644),
    ] {
        std::fs::set_permissions(dir.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// `n` daemons sharing one store and one master key, each in its own
/// directory under the returned temporary directory, started by `start`
/// (`Daemon::start_in` or `Daemon::spawn_in`).
pub fn cluster(
    n: usize,
    policy: &str,
    store_url: &str,
    start: fn(&Path) -> Daemon,
) -> (tempfile::TempDir, Vec<Daemon>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut key = [0u8; 32];
    getrandom_fill(&mut key);
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let daemons = (0..n)
        .map(|i| {
            let dir = tmp.path().join(format!("replica{i}"));
            write_files_with(&dir, policy, store_url, &key);
            start(&dir)
        })
        .collect();
    (tmp, daemons)
}

fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}

/// One HTTP/1.1 request over TCP.
pub async fn http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    send(stream, method, path, headers, Vec::new()).await
}

pub async fn send<S>(
    stream: S,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(StatusCode, HeaderMap, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body))
}

pub fn b64d(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// Splits a compact JWS and decodes header and claims.
pub fn decode_jwt(jwt: &str) -> (Value, Value, Vec<u8>, String) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {jwt}");
    let header = serde_json::from_slice(&b64d(parts[0])).unwrap();
    let claims = serde_json::from_slice(&b64d(parts[1])).unwrap();
    let sig = b64d(parts[2]);
    (header, claims, sig, format!("{}.{}", parts[0], parts[1]))
}

/// Verifies a JWT against a JWKS document with the RustCrypto crates only,
/// using the key that the JWT's `kid` names. Returns false on any mismatch.
pub fn verify_with_jwks(jwt: &str, jwks: &Value) -> bool {
    let (header, _, sig, input) = decode_jwt(jwt);
    let Some(jwk) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
    else {
        return false;
    };
    if jwk["alg"] != header["alg"] {
        return false;
    }
    match header["alg"].as_str() {
        Some("RS384") => {
            let n = rsa::BoxedUint::from_be_slice_vartime(&b64d(jwk["n"].as_str().unwrap()));
            let e = rsa::BoxedUint::from_be_slice_vartime(&b64d(jwk["e"].as_str().unwrap()));
            let public = rsa::PublicKey::new(n, e).unwrap();
            let verifier = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha384>::new(public);
            let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig.as_slice()) else {
                return false;
            };
            rsa::signature::Verifier::verify(&verifier, input.as_bytes(), &sig).is_ok()
        }
        Some("ES384") => {
            if sig.len() != 96 {
                return false;
            }
            let mut point = vec![0x04];
            point.extend(b64d(jwk["x"].as_str().unwrap()));
            point.extend(b64d(jwk["y"].as_str().unwrap()));
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
            let Ok(sig) = p384::ecdsa::Signature::from_slice(&sig) else {
                return false;
            };
            key.verify(input.as_bytes(), &sig).is_ok()
        }
        _ => false,
    }
}

/// One request on a Unix socket that never panics: `Err` when the daemon
/// is gone, the connection is cut, or no answer comes within `within`
/// (for tests that kill the daemon under load or flood it).
pub async fn socket_try(
    socket: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
    within: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let socket = socket.to_path_buf();
    let path = path.to_owned();
    tokio::time::timeout(within, async move {
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|e| e.to_string())?;
        let (status, _, body) = send(stream, method, &path, &[], body).await?;
        Ok((status, body))
    })
    .await
    .map_err(|_| format!("no answer within {within:?}"))?
}

/// A master key for `write_files_with`: base64 of 32 random bytes.
pub fn random_master_key() -> String {
    let mut key = [0u8; 32];
    getrandom_fill(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A small xorshift generator for test randomness (no extra crate).
pub struct Rng(u64);

impl Rng {
    /// Seeded from the environment `JWKSD_TEST_SEED` when set (to replay a
    /// failure), else at random; the seed is printed.
    pub fn new(what: &str) -> Rng {
        let seed = std::env::var("JWKSD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| pg::random_u64() | 1);
        eprintln!("{what}: JWKSD_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `verify_with_jwks` with aws-lc-rs (optimised), for tests that verify
/// tens of thousands of assertions: RustCrypto's generic code is compiled
/// unoptimised inside a test crate and takes milliseconds per ES384 check.
/// The public key is still built from the JWK's members only.
pub fn verify_with_jwk_fast(jwt: &str, jwk: &Value) -> bool {
    use aws_lc_rs::signature;
    let (header, _, sig, input) = decode_jwt(jwt);
    if jwk["kid"] != header["kid"] || jwk["alg"] != header["alg"] {
        return false;
    }
    let field = |name: &str| jwk[name].as_str().map(b64d).unwrap_or_default();
    match header["alg"].as_str() {
        Some("RS384") => signature::RsaPublicKeyComponents {
            n: field("n"),
            e: field("e"),
        }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA384,
            input.as_bytes(),
            &sig,
        )
        .is_ok(),
        Some("ES384") => {
            let mut point = vec![0x04];
            point.extend(field("x"));
            point.extend(field("y"));
            signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(input.as_bytes(), &sig)
                .is_ok()
        }
        _ => false,
    }
}

/// Who a socket caller started by `curl_as` runs as: uid, primary gid and
/// exactly these supplementary groups.
pub struct As<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
}

/// Whether this test can run socket callers as other users: it runs as
/// root, and `setpriv` and `curl` are installed. Prints SKIPPED otherwise.
pub fn can_run_callers_as_others(what: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {what}: needs root to run callers as other uids");
        return false;
    }
    for tool in ["setpriv", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED {what}: {tool} is not installed");
            return false;
        }
    }
    true
}

/// Lets members of group `gid` (a group with a name on this host) reach
/// the socket of the daemon whose files `write_files` put in `dir`: the
/// socket is 0660 owned by that group (the config refuses world-writable
/// modes), and `dir` is 0755.
pub fn open_socket_to_group(dir: &Path, gid: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .unwrap()
        .unwrap_or_else(|| panic!("no group {gid} on this host"));
    let cfg = dir.join("jwksd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen(
            "[server]\n",
            &format!(
                "[server]\nsocket_mode = \"0660\"\nsocket_group = {:?}\n",
                group.name
            ),
            1,
        ),
    )
    .unwrap();
}

/// `times` identical requests on the socket, one after the other on one
/// connection, by `curl` running as `who` (through `setpriv`, so the
/// supplementary groups are exactly `who.groups`). Returns each answer's
/// HTTP status (0: none) and body.
pub fn curl_as(
    socket: &Path,
    who: &As<'_>,
    method: &str,
    path: &str,
    body: Option<&str>,
    times: usize,
) -> Vec<(u16, String)> {
    let groups = if who.groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        let list: Vec<String> = who.groups.iter().map(u32::to_string).collect();
        format!("--groups={}", list.join(","))
    };
    // Each answer ends with a line holding its status alone.
    const MARK: &str = "\n--status:";
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", who.uid))
        .arg(format!("--regid={}", who.gid))
        .arg(groups)
        .args(["--", "curl", "-s", "--max-time", "60", "-X", method])
        .arg("-w")
        .arg(format!("{MARK}%{{http_code}}\\n"))
        .arg("--unix-socket")
        .arg(socket);
    let tmp;
    if let Some(body) = body {
        // Through a file readable by `who`: argv has its limits.
        tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        cmd.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", tmp.path().display()));
    }
    for _ in 0..times {
        cmd.arg(format!("http://localhost{path}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success() || !out.stdout.is_empty(),
        "curl as uid {} failed: {}",
        who.uid,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut answers = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(MARK) {
        let body = rest[..at].to_owned();
        let after = &rest[at + MARK.len()..];
        let (code, next) = after.split_once('\n').unwrap_or((after, ""));
        answers.push((code.trim().parse().unwrap_or(0), body));
        rest = next;
    }
    answers
}

/// The value of one series on the admin listener's `/metrics`, e.g.
/// `jwksd_audit_refusals_suppressed_total{why="uid_budget"}`.
pub async fn metric(d: &Daemon, series: &str) -> Option<f64> {
    let (_, _, body) = http(d.admin, Method::GET, "/metrics", &[]).await.ok()?;
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A connection to the Unix socket at `path` made as `uid`/`gid` (no
/// supplementary groups): the daemon sees them through SO_PEERCRED, which
/// the kernel takes from the connecting thread. So the connect runs on a
/// thread of its own whose credentials alone are switched: the raw
/// setresuid/setresgid/setgroups system calls change the calling thread
/// only, where libc's wrappers change every thread of the process. The
/// thread ends once connected; the connection is this process's. Needs
/// root, and `gid` must be allowed into the socket (its group, and the
/// search permission on its directory).
pub fn connect_as(path: &Path, uid: u32, gid: u32) -> std::io::Result<tokio::net::UnixStream> {
    let path = path.to_owned();
    let stream = std::thread::spawn(move || {
        let check = |r: libc::c_long| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: plain system calls on this thread's own credentials.
        unsafe {
            check(libc::syscall(
                libc::SYS_setgroups,
                0,
                std::ptr::null::<libc::gid_t>(),
            ))?;
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
        }
        std::os::unix::net::UnixStream::connect(&path)
    })
    .join()
    .expect("the connecting thread panicked")?;
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// Applies migrations 1-3 only to the database at `url` (`sqlite://...` or
/// `postgres://...`), as a release before the keyed audit chain did: the
/// starting point of the upgrade tests.
pub async fn migrate_to_version_3(url: &str) {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrator = |sql: [&'static str; 3]| {
        Migrator::with_migrations(
            (1..)
                .zip(sql)
                .map(|(v, sql)| {
                    Migration::new(
                        v,
                        "before the keyed chain".into(),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect(),
        )
    };
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        migrator([
            include_str!("../../migrations/sqlite/0001_keys_and_audit.sql"),
            include_str!("../../migrations/sqlite/0002_lease.sql"),
            include_str!("../../migrations/sqlite/0003_live_keys.sql"),
        ])
        .run(&pool)
        .await
        .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        migrator([
            include_str!("../../migrations/postgres/0001_keys_and_audit.sql"),
            include_str!("../../migrations/postgres/0002_lease.sql"),
            include_str!("../../migrations/postgres/0003_live_keys.sql"),
        ])
        .run(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
}
