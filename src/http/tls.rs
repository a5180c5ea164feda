//! TLS termination for the public JWKS listener (`server.tls_cert` /
//! `server.tls_key`).
//!
//! Owns the certificate (`CertStore`: load, validate, hot swap) and the TLS
//! step of each connection (`Tls`: rustls handshake, HTTP/1.1 or HTTP/2 by
//! ALPN), which plugs into `net::serve`. It does not own the accept loop,
//! its bounds or the shutdown (that is `net`), the routes (`http::public`)
//! nor the decision when to reload (the daemon calls
//! `CertStore::check_for_change` on its tick and `CertStore::reload` on
//! SIGHUP).
//!
//! A reload only changes what *new* handshakes present: connections already
//! open keep the session they negotiated and are never dropped by a swap.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use zeroize::Zeroizing;

use crate::net::{Prepare, Prepared, Protocol};

/// Longest a client may take from TCP accept to a finished TLS handshake
/// (10 s); a slower one is disconnected so it cannot hold a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate or key could not be used. Messages name the file and
/// the reason, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, permissions, ...).
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The certificate or key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no usable PEM certificate chain.
    #[error("{}: {reason}", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no usable PEM private key (PKCS#8, PKCS#1 RSA or
    /// SEC1 EC), or one the crypto provider cannot sign with.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        reason: String,
    },
    /// Both files parse but the key is not the certificate's key.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The crypto provider refused the TLS configuration (TLS 1.2 and 1.3).
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// What identifies one version of a file without reading it: a rename, a
/// rewrite or a touch changes at least one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The stamps of (certificate, key); `None` for a file that cannot be
/// stat'ed right now.
type Stamps = [Option<FileStamp>; 2];

fn stamp(path: &Path) -> Option<FileStamp> {
    // Follows symlinks, so a Kubernetes-style `..data` symlink swap counts.
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The certificate chain and private key served on the public listener,
/// swappable while the daemon runs. It is the rustls certificate resolver:
/// every new handshake gets whatever is current at that moment.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file stamps at the last load attempt, good or refused, so that a
    /// refused file is reported once, not on every tick.
    seen: Mutex<Stamps>,
}

impl CertStore {
    /// Loads a PEM certificate chain (end-entity first) and a PEM private key
    /// (PKCS#8, PKCS#1 RSA or SEC1 EC) with the aws-lc-rs provider.
    ///
    /// Errors: a file that cannot be read or parsed, an unsupported key, or
    /// a key that is not the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::with_provider(
            cert,
            key,
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
    }

    /// As `load`, with the crypto provider used to load the key and to run
    /// the handshakes.
    pub fn with_provider(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamps = [stamp(cert), stamp(key)];
        let certified = read_pair(cert, key, &provider)?;
        Ok(CertStore {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(stamps),
        })
    }

    /// The chain and key new handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads both files and swaps them in if they parse and match; a bad
    /// pair is refused (logged, and returned as the error) and the previous
    /// one stays in force. Returns whether the served chain changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        // Stamp before reading: a write racing with the read changes the
        // stamp again and the next check retries.
        let stamps = [stamp(&self.cert_path), stamp(&self.key_path)];
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        let new = match read_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload refused; still serving the previous certificate");
                return Err(e);
            }
        };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.cert == new.cert {
            tracing::debug!(cert = %self.cert_path.display(), "TLS certificate unchanged");
            return Ok(false);
        }
        *current = Arc::new(new);
        tracing::info!(
            cert = %self.cert_path.display(),
            chain_len = current.cert.len(),
            "TLS certificate reloaded; new connections get it"
        );
        Ok(true)
    }

    /// Reloads when either file's size, mtime, ctime or inode changed since
    /// the last load attempt (cheap: two `stat`s). Returns whether the served
    /// chain changed. A refused pair is logged once and retried only when a
    /// file changes again.
    pub fn check_for_change(&self) -> bool {
        let now = [stamp(&self.cert_path), stamp(&self.key_path)];
        if *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return false;
        }
        self.reload().unwrap_or(false)
    }

    /// A rustls server configuration that resolves certificates through this
    /// store: TLS 1.2 and 1.3, no client authentication, ALPN `h2` then
    /// `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("chain_len", &self.current().cert.len())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Reads and checks one certificate/key pair.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert.to_path_buf(),
            reason: pem_reason(&e, "CERTIFICATE"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }

    let key_pem = Zeroizing::new(std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?);
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: pem_reason(
            &e,
            "PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY",
        ),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key {
            path: key.to_path_buf(),
            reason: format!("unusable private key: {e}"),
        })?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // `Unknown` (a provider that cannot export the public key) is
        // refused too: serving a key we could not check is not an option.
        Err(e) => Err(TlsError::Certificate {
            path: cert.to_path_buf(),
            reason: format!("cannot check the first certificate against the key: {e}"),
        }),
    }
}

/// A PEM error in words, without quoting the file (which may be a key).
fn pem_reason(e: &pem::Error, wanted: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {wanted} block found"),
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line".into(),
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64".into(),
        pem::Error::SectionTooLarge => "a PEM block is too large".into(),
        pem::Error::Io(e) => format!("cannot read: {e}"),
        _ => "malformed PEM".into(),
    }
}

/// The public listener's step before HTTP (the seam of `net::serve`): the
/// rustls handshake, at most `HANDSHAKE_TIMEOUT`, then HTTP/2 when ALPN
/// chose `h2` and HTTP/1.1 otherwise (RFC 9113 §3.3: over TLS, HTTP/2 is
/// only spoken when negotiated). Handshake failures drop the connection
/// (logged at debug level by `net`: scanners are noisy).
pub struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl Tls {
    /// Handshakes with `certs`' current certificate (re-read on every
    /// handshake, so a reload reaches new connections).
    ///
    /// Errors: the crypto provider refuses the TLS configuration.
    pub fn new(certs: Arc<CertStore>) -> Result<Tls, TlsError> {
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(certs.server_config()?)),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Prepare<TcpStream> for Tls {
    type Io = TlsStream<TcpStream>;

    async fn prepare(&self, stream: TcpStream) -> io::Result<Prepared<Self::Io>> {
        let tls = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let mut prepared = Prepared::http1(tls);
        if h2 {
            prepared.protocol = Protocol::Http2;
        }
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::time::Instant;

    use rcgen::{CertificateParams, KeyPair};
    use tokio::io::{AsyncRead, AsyncReadExt as _};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use crate::net::Limits;

    /// A self-signed certificate for `localhost` and its PKCS#8 key, PEM.
    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Replaces a file the way an operator should: temp file + rename.
    fn replace(path: &Path, content: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn ee_der(store: &CertStore) -> Vec<u8> {
        store.current().cert[0].as_ref().to_vec()
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn ec_and_rsa_pkcs8_pairs_load() {
        let dir = tempfile::tempdir().unwrap();
        for (i, alg) in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_RSA_SHA256,
        ]
        .into_iter()
        .enumerate()
        {
            let (cert, key) = self_signed(alg);
            let c = write(dir.path(), &format!("c{i}.pem"), &cert);
            let k = write(dir.path(), &format!("k{i}.pem"), &key);
            let store = CertStore::load(&c, &k).unwrap();
            assert_eq!(ee_der(&store), pem_der(&cert));
        }
    }

    #[test]
    fn key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &other_key);
        let e = CertStore::load(&c, &k).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the private key in {} does not match the certificate in {}",
                k.display(),
                c.display()
            )
        );
    }

    #[test]
    fn missing_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        let missing = dir.path().join("missing.pem");

        let e = CertStore::load(&missing, &k).unwrap_err();
        assert!(
            matches!(&e, TlsError::Read { path, .. } if path == &missing),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display()))
        );

        let e = CertStore::load(&c, &missing).unwrap_err();
        assert!(
            matches!(&e, TlsError::Read { path, .. } if path == &missing),
            "{e:?}"
        );
    }

    #[test]
    fn files_without_pem_blocks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        let empty = write(dir.path(), "empty.pem", "not pem\n");

        let e = CertStore::load(&empty, &k).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: no CERTIFICATE block found", empty.display())
        );
        // A certificate where the key should be: no key block.
        let e = CertStore::load(&c, &c).unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e:?}");
    }

    #[test]
    fn a_broken_key_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = write(dir.path(), "c.pem", &cert);
        let secret = "U0VDUkVUU0VDUkVUU0VDUkVU";
        let k = write(
            dir.path(),
            "k.pem",
            &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
        );
        let e = CertStore::load(&c, &k).unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e:?}");
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(!format!("{e:?}").contains(secret), "{e:?}");
    }

    #[test]
    fn reload_swaps_a_good_pair_and_keeps_the_old_one_on_a_bad_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert1, key1) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (cert2, key2) = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        let c = write(dir.path(), "c.pem", &cert1);
        let k = write(dir.path(), "k.pem", &key1);
        let store = CertStore::load(&c, &k).unwrap();

        assert!(!store.reload().unwrap(), "same files: nothing changed");

        replace(&c, &cert2); // key1 no longer matches
        assert!(matches!(store.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(ee_der(&store), pem_der(&cert1));

        replace(&k, &key2);
        assert!(store.reload().unwrap());
        assert_eq!(ee_der(&store), pem_der(&cert2));
    }

    #[test]
    fn check_for_change_reloads_only_when_a_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (cert1, key1) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (cert2, key2) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = write(dir.path(), "c.pem", &cert1);
        let k = write(dir.path(), "k.pem", &key1);
        let store = CertStore::load(&c, &k).unwrap();
        assert!(!store.check_for_change());

        // Half-way through a non-atomic update: refused, old cert kept, and
        // not retried while nothing changes.
        replace(&c, &cert2);
        assert!(!store.check_for_change());
        assert_eq!(ee_der(&store), pem_der(&cert1));
        assert!(!store.check_for_change());

        replace(&k, &key2);
        assert!(store.check_for_change());
        assert_eq!(ee_der(&store), pem_der(&cert2));
        assert!(!store.check_for_change());
    }

    fn test_store(dir: &Path) -> Arc<CertStore> {
        let (cert, key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = write(dir, "c.pem", &cert);
        let k = write(dir, "k.pem", &key);
        Arc::new(CertStore::load(&c, &k).unwrap())
    }

    /// `net::serve` with the TLS step (handshake timeout 200 ms) on
    /// 127.0.0.1:0.
    struct TlsServer {
        addr: SocketAddr,
        /// The certificate it presents, for clients to trust.
        trust: CertificateDer<'static>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl TlsServer {
        async fn start(limits: Limits) -> TlsServer {
            let dir = tempfile::tempdir().unwrap();
            let certs = test_store(dir.path());
            let trust = certs.current().cert[0].clone();
            let tls = Tls {
                handshake_timeout: Duration::from_millis(200),
                ..Tls::new(certs).unwrap()
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(crate::net::serve(
                "public",
                listener,
                tls,
                router,
                limits,
                shutdown.clone(),
            ));
            TlsServer {
                addr,
                trust,
                shutdown,
                task,
                _dir: dir,
            }
        }

        /// Cancels and waits (at most 5 s) for `serve` to return.
        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// A TLS client of `addr` that trusts `trust` and offers `http/1.1`.
    async fn handshake(
        addr: SocketAddr,
        trust: &CertificateDer<'static>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trust.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// Reads from `stream` until the server closes it; fails with `what`
    /// if it is still open after 5 s.
    async fn assert_closed_soon(mut stream: impl AsyncRead + Unpin, what: &str) {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}"));
        assert!(matches!(read, Ok(0) | Err(_)), "{what}: {read:?}");
    }

    #[tokio::test]
    async fn a_client_that_never_handshakes_is_disconnected() {
        let server = TlsServer::start(Limits::default()).await;
        let idle = TcpStream::connect(server.addr).await.unwrap();
        assert_closed_soon(idle, "a silent client kept past the handshake timeout").await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_client_that_negotiates_http1_and_sends_nothing_is_cut_after_the_header_timeout() {
        let server = TlsServer::start(Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let silent = handshake(server.addr, &server.trust).await.unwrap();
        let started = Instant::now();
        assert_closed_soon(silent, "a silent TLS client kept past the header timeout").await;
        assert!(started.elapsed() >= Duration::from_millis(250));
        server.stop().await;
    }

    #[tokio::test]
    async fn with_one_connection_allowed_an_open_tls_connection_holds_off_the_next_handshake() {
        let server = TlsServer::start(Limits {
            max_connections: 1,
            ..Limits::default()
        })
        .await;
        let open = handshake(server.addr, &server.trust).await.unwrap();
        let (addr, trust) = (server.addr, server.trust.clone());
        let next = tokio::spawn(async move { handshake(addr, &trust).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!next.is_finished(), "a second handshake while one was open");
        drop(open);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the second handshake never finished after the first closed")
            .unwrap()
            .unwrap();
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_the_listener_and_returns() {
        let server = TlsServer::start(Limits::default()).await;
        let addr = server.addr;
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.stop().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
