//! The store's TLS rule against a real PostgreSQL that speaks TLS on a
//! real non-loopback address: a server of the test's own, with a
//! certificate from a test CA, on a host of its own (a network namespace
//! joined to this one by a veth pair, so no traffic leaves the machine).
//!
//! Both sides: `sslmode=verify-full` with the right CA connects, and the
//! daemon generates keys, serves the JWKS and signs over TLS; no sslmode,
//! `require` and `verify-ca` to that host are refused at config load naming
//! `store.url`; `verify-full` with another CA is refused by the TLS
//! handshake. The server accepts plain connections too, so what refuses
//! them is the daemon.

mod helpers;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sqlx::Connection as _;

use helpers::Daemon;

/// A password that must never be printed.
const PASSWORD: &str = "pw-s3cr3t-do-not-print";

/// The newest PostgreSQL's `bin` directory, if the server is installed.
fn postgres_bin() -> Option<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    bins.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    bins.pop()
}

/// Runs a command, failing the test with its output if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test CA, and a server certificate it issued for `host`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// (certificate PEM, key PEM) for `host` (an IP address: an IP SAN).
    fn server(&self, host: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A network namespace joined to this one by a veth pair, with a /30 of
/// the benchmarking range (198.18.0.0/15, never routed) picked from the
/// pid so that parallel runs do not collide. Removed on drop.
struct TestHost {
    netns: String,
    /// The address of the namespace's end: where its server listens.
    addr: String,
}

impl TestHost {
    fn new() -> TestHost {
        let pid = std::process::id();
        let netns = format!("jwksd-pgtls-{pid}");
        let (outer, inner) = (format!("jpt{pid}a"), format!("jpt{pid}b"));
        let base: u32 = (198 << 24 | 18 << 16) + (pid % 32768) * 4;
        let ip = |n: u32| std::net::Ipv4Addr::from(base + n).to_string();
        let host = TestHost {
            netns: netns.clone(),
            addr: ip(2),
        };
        run(Command::new("ip").args(["netns", "add", &netns]));
        run(Command::new("ip").args([
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &netns,
        ]));
        run(Command::new("ip").args(["addr", "add", &format!("{}/30", ip(1)), "dev", &outer]));
        run(Command::new("ip").args(["link", "set", &outer, "up"]));
        for args in [
            vec!["addr", "add", &format!("{}/30", ip(2)), "dev", &inner],
            vec!["link", "set", &inner, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            run(host.exec("ip").args(args));
        }
        host
    }

    /// `program` run inside the namespace.
    fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// A PostgreSQL server of the test's own inside `host`, TLS on with a
/// certificate from `ca`, accepting TLS and plain connections without a
/// password. Stopped on drop (before the host goes).
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    _tmp: tempfile::TempDir,
    host: TestHost,
}

impl TlsPostgres {
    fn start(bin: PathBuf, ca: &Ca) -> TlsPostgres {
        let host = TestHost::new();
        let tmp = tempfile::tempdir().unwrap();
        // PostgreSQL refuses to run as root: everything of its own belongs
        // to the postgres user.
        let data = tmp.path().join("data");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        run(Command::new("chown").arg("postgres:").arg(tmp.path()));
        run(as_postgres(&bin, "initdb")
            .args(["--no-sync", "-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        let (cert, key) = ca.server(&host.addr);
        std::fs::write(data.join("server.crt"), cert).unwrap();
        std::fs::write(data.join("server.key"), key).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        run(Command::new("chown")
            .arg("postgres:")
            .arg(data.join("server.crt"))
            .arg(data.join("server.key")));
        let conf = format!(
            "\nlisten_addresses = '{}'\nport = 5432\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\nmax_connections = 40\n",
            host.addr,
            tmp.path().display()
        );
        append(&data.join("postgresql.conf"), &conf);
        append(
            &data.join("pg_hba.conf"),
            "\nhost all all 0.0.0.0/0 trust\n",
        );
        let mut start = host.exec("setpriv");
        start
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-l"])
            .arg(tmp.path().join("postgres.log"))
            .arg("-D")
            .arg(&data)
            .arg("start")
            .stdout(Stdio::null());
        let pg = TlsPostgres {
            bin,
            data,
            _tmp: tmp,
            host,
        };
        let out = start.output().unwrap();
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(pg._tmp.path().join("postgres.log")).unwrap_or_default()
        );
        pg
    }

    /// The store URL for this server, with `query` appended.
    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{}:5432/postgres{query}",
            self.host.addr
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .host
            .exec("setpriv")
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

fn as_postgres(bin: &Path, program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin.join(program));
    cmd
}

fn append(file: &Path, text: &str) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// `jwksd serve` on `store_url`, expected to refuse to start: its exit
/// status and stderr. A daemon still running after 30 s accepted the
/// store: the test fails.
fn serve_refused(store_url: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    helpers::write_files_with(
        tmp.path(),
        &helpers::policy(""),
        store_url,
        &helpers::random_master_key(),
    );
    let mut child = Command::new(helpers::BIN)
        .args(["serve", "--config"])
        .arg(tmp.path().join("jwksd.toml"))
        .args(helpers::allow_root())
        .env_remove("JWKSD_MASTER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!status.success(), "serve exited 0: {stderr}");
            assert!(
                !stderr.contains(PASSWORD),
                "the password was printed: {stderr}"
            );
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "jwksd serve started on {}: {}",
                jwksd::config::redact_url(store_url),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_postgres_must_be_authenticated_tls() {
    let Some(bin) = postgres_bin() else {
        eprintln!(
            "SKIPPED store TLS test: no PostgreSQL server binaries under /usr/lib/postgresql"
        );
        return;
    };
    let (ca, other_ca) = (Ca::new("jwksd test CA"), Ca::new("some other CA"));
    let pg = TlsPostgres::start(bin, &ca);
    let files = tempfile::tempdir().unwrap();
    let (ca_file, other_file) = (files.path().join("ca.pem"), files.path().join("other.pem"));
    std::fs::write(&ca_file, ca.issuer.pem()).unwrap();
    std::fs::write(&other_file, other_ca.issuer.pem()).unwrap();

    // The same server over its Unix socket is local: no TLS needed.
    let local = format!(
        "postgres://postgres@{}/postgres",
        pg._tmp.path().display().to_string().replace('/', "%2F")
    );
    let store = jwksd::store::PostgresStore::open(&local)
        .await
        .unwrap_or_else(|e| panic!("the Unix socket was refused: {e}"));
    drop(store);

    // Refused at load, before any connection, naming store.url and the rule.
    for (query, mode) in [
        ("", "sslmode is prefer"),
        ("?sslmode=require", "sslmode is require"),
        (
            &format!("?sslmode=verify-ca&sslrootcert={}", ca_file.display()),
            "sslmode is verify-ca",
        ),
    ] {
        let stderr = serve_refused(&pg.url(query));
        assert!(
            stderr.contains("store.url = ")
                && stderr.contains(&format!("host {} is not loopback", pg.host.addr))
                && stderr.contains("add sslmode=verify-full")
                && stderr.contains(mode),
            "{query}: {stderr}"
        );
    }

    // verify-full with a CA that did not issue the server's certificate:
    // the handshake fails.
    let stderr = serve_refused(&pg.url(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        other_file.display()
    )));
    assert!(
        stderr.contains("UnknownIssuer") || stderr.contains("invalid peer certificate"),
        "{stderr}"
    );

    // verify-full with the right CA: the daemon works, over TLS.
    let url = pg.url(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ));
    let dir = tempfile::tempdir().unwrap();
    helpers::write_files_with(
        dir.path(),
        &helpers::policy(""),
        &url,
        &helpers::random_master_key(),
    );
    let d = Daemon::start_in(dir.path()).when_settled().await;
    let (status, _, body) = d.jwks().await;
    assert_eq!(status, StatusCode::OK);
    let jwks: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 4, "{jwks}");
    let assertion = d.assertion("ES384").await;
    assert!(helpers::verify_with_jwks(
        assertion["assertion"].as_str().unwrap(),
        &jwks
    ));
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (tls, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'jwksd'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(all > 0 && tls == all, "{tls} of {all} connections use TLS");
    drop(d);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(!log.contains(PASSWORD), "the password is in the log");
}
