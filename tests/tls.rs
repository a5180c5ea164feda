//! TLS on the public JWKS listener, against the real daemon: HTTP/1.1 and
//! HTTP/2 over rustls, only clients trusting the CA get through, and a
//! certificate swap reaches new connections without dropping open ones,
//! while a bad replacement is refused.

mod helpers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use helpers::Daemon;

/// A test CA that issues server certificates for `localhost`/`127.0.0.1`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate (PEM, chain with the CA appended) and its key.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Replaces a file atomically: temp file in the same directory + rename.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A daemon whose public listener serves `leaf` (files `tls.crt`, `tls.key`
/// next to the config, named relative to it), started by `start`
/// (`Daemon::start_in` or `Daemon::spawn_in`).
fn start_tls_daemon(leaf: &Leaf, start: fn(&Path) -> Daemon) -> (Daemon, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    write_tls_files(tmp.path(), &leaf.chain_pem, &leaf.key_pem);
    (start(tmp.path()), tmp)
}

/// The usual test files plus `tls.crt`/`tls.key`, named in the config.
fn write_tls_files(dir: &Path, chain_pem: &str, key_pem: &str) {
    write_tls_files_with(dir, chain_pem, key_pem, "");
}

/// `write_tls_files` with `server_extra` in `[server]`.
fn write_tls_files_with(dir: &Path, chain_pem: &str, key_pem: &str, server_extra: &str) {
    helpers::write_files(dir, &helpers::policy(""));
    let config = dir.join("jwksd.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[server]\n",
        &format!("[server]\ntls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n{server_extra}\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    std::fs::write(dir.join("tls.crt"), chain_pem).unwrap();
    std::fs::write(dir.join("tls.key"), key_pem).unwrap();
}

/// A client that trusts `ca` only and offers the given ALPN protocols.
fn client(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

fn peer_cert(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

/// An open HTTP/1.1 keep-alive connection.
struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Http1 {
    async fn open(stream: TlsStream<TcpStream>) -> Http1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Http1 { sender }
    }

    async fn jwks(&mut self) -> (StatusCode, Value) {
        self.sender.ready().await.unwrap();
        let req = Request::get("/.well-known/jwks.json")
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_11);
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

fn assert_jwks_with_keys(status: StatusCode, jwks: &Value) {
    assert_eq!(status, StatusCode::OK, "{jwks}");
    let keys = jwks["keys"].as_array().expect("a JWKS has keys");
    assert!(!keys.is_empty(), "{jwks}");
    assert!(keys.iter().all(|k| k["kid"].is_string()), "{jwks}");
}

/// Opens new connections until one presents `der` (the tick checks the
/// files every 2 s).
async fn wait_for_cert(addr: SocketAddr, connector: &TlsConnector, der: &[u8], d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = connect(addr, connector).await
            && peer_cert(&s) == der
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new connections never got the new certificate: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn jwks_is_served_over_tls_with_http1_and_http2_only_to_clients_trusting_the_ca() {
    let ca = Ca::new("jwksd test CA");
    let leaf = ca.leaf();
    let (d, _tmp) = start_tls_daemon(&leaf, Daemon::start_in);
    d.ready().await;

    // (a) HTTP/1.1, chosen by ALPN.
    let connector = client(&ca.der(), &[b"http/1.1"]);
    let stream = connect(d.public, &connector).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(&stream), leaf.der);
    let (status, jwks) = Http1::open(stream).await.jwks().await;
    assert_jwks_with_keys(status, &jwks);

    // (b) HTTP/2, chosen by ALPN; the same document.
    let connector_h2 = client(&ca.der(), &[b"h2", b"http/1.1"]);
    let stream = connect(d.public, &connector_h2).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/.well-known/jwks.json")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let jwks_h2: Value = serde_json::from_slice(&body).unwrap();
    assert_jwks_with_keys(status, &jwks_h2);
    assert_eq!(jwks_h2, jwks);

    // (c) A client that trusts another CA does not get through.
    let stranger = client(&Ca::new("some other CA").der(), &[b"http/1.1"]);
    let err = connect(d.public, &stranger).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("unknownissuer")
            || err.to_string().to_lowercase().contains("unknown issuer"),
        "{err}"
    );

    // Plain HTTP on the TLS port gets no JWKS.
    let plain = helpers::http(d.public, hyper::Method::GET, "/.well-known/jwks.json", &[]).await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_over_tls_is_closed_after_the_header_timeout() {
    let ca = Ca::new("jwksd test CA");
    let leaf = ca.leaf();
    let tmp = tempfile::tempdir().unwrap();
    write_tls_files_with(
        tmp.path(),
        &leaf.chain_pem,
        &leaf.key_pem,
        "header_timeout = \"2s\"",
    );
    let d = Daemon::start_in(tmp.path());
    d.ready().await;
    let stream = connect(d.public, &client(&ca.der(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("https://localhost/.well-known/jwks.json")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    // Then the client sends nothing: the daemon ends the connection (GOAWAY,
    // then close) after header_timeout, as HTTP/1.1 between requests.
    let idle = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), conn)
        .await
        .expect("an idle HTTP/2 connection was kept open")
        .unwrap()
        .unwrap();
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, header_timeout 2s"
    );
}

#[tokio::test]
async fn a_replaced_certificate_reaches_new_connections_without_dropping_open_ones() {
    let ca = Ca::new("jwksd test CA");
    let (first, second) = (ca.leaf(), ca.leaf());
    let (d, _tmp) = start_tls_daemon(&first, Daemon::start_in);
    d.ready().await;
    let connector = client(&ca.der(), &[b"http/1.1"]);

    let before = connect(d.public, &connector).await.unwrap();
    assert_eq!(peer_cert(&before), first.der);
    let mut open = Http1::open(before).await;
    let (status, jwks) = open.jwks().await;
    assert_jwks_with_keys(status, &jwks);

    // No signal: the tick notices the changed files.
    replace(&d.dir.join("tls.key"), &second.key_pem);
    replace(&d.dir.join("tls.crt"), &second.chain_pem);
    wait_for_cert(d.public, &connector, &second.der, &d).await;
    assert!(d.log().contains("TLS certificate reloaded"), "{}", d.log());

    // The keep-alive connection from before the swap still answers.
    let (status, again) = open.jwks().await;
    assert_jwks_with_keys(status, &again);
    assert_eq!(again, jwks);
}

#[tokio::test]
async fn a_replacement_key_that_does_not_match_is_refused_and_the_old_certificate_kept() {
    let ca = Ca::new("jwksd test CA");
    let (good, other) = (ca.leaf(), ca.leaf());
    // Spawned: a real SIGHUP, and the log searched for key material must
    // be all a real daemon writes.
    let (d, _tmp) = start_tls_daemon(&good, Daemon::spawn_in);
    d.ready().await;
    let connector = client(&ca.der(), &[b"http/1.1"]);

    replace(&d.dir.join("tls.key"), &other.key_pem);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("TLS certificate reload refused") {
        assert!(Instant::now() < deadline, "no refusal logged: {}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        d.log().contains("does not match the certificate"),
        "{}",
        d.log()
    );
    // Past another tick, the old pair is still the one served.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stream = connect(d.public, &connector).await.unwrap();
    assert_eq!(peer_cert(&stream), good.der);
    let (status, jwks) = Http1::open(stream).await.jwks().await;
    assert_jwks_with_keys(status, &jwks);
    assert!(
        !d.log().contains(&other.key_pem[30..80]),
        "key material logged"
    );
}

#[test]
fn the_daemon_refuses_to_start_with_a_key_that_does_not_match_the_certificate() {
    let ca = Ca::new("jwksd test CA");
    let (good, other) = (ca.leaf(), ca.leaf());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tls_files(dir, &good.chain_pem, &other.key_pem);

    let out = std::process::Command::new(helpers::BIN)
        .args(["serve", "--config"])
        .arg(dir.join("jwksd.toml"))
        .args(helpers::allow_root())
        .env_remove("JWKSD_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.tls_cert"), "{stderr}");
    assert!(
        stderr.contains("does not match the certificate"),
        "{stderr}"
    );
    assert!(!dir.join("jwksd.sock").exists(), "started anyway");
}
