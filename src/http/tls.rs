//! TLS termination for the public JWKS listener (`server.tls_cert` /
//! `server.tls_key`).
//!
//! Owns the certificate (`CertStore`: load, validate, hot swap) and the TLS
//! accept loop (`serve_tls`: rustls handshake, HTTP/1.1 and HTTP/2 over the
//! same port, graceful shutdown). It does not own the routes (that is
//! `http::public`) nor the decision when to reload (the daemon calls
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

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// Longest a client may take from TCP accept to a finished TLS handshake
/// (10 s); a slower one is disconnected so it cannot hold a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest shutdown waits for open connections to finish their requests
/// (10 s); those still open then are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Most connections (handshaking or open) served at once (1024); further
/// clients wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest an HTTP/1.1 client may take to send a request's headers (30 s).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Serves `router` over TLS on `listener` until `shutdown` is cancelled.
///
/// Each connection: TLS handshake (at most `HANDSHAKE_TIMEOUT`), then HTTP/2
/// or HTTP/1.1 (by ALPN or by the client preface) through the router. At
/// most `MAX_CONNECTIONS` at once. On cancel it stops accepting, asks open
/// connections to finish (HTTP/1.1 closes after the response in flight,
/// HTTP/2 sends GOAWAY), waits up to `SHUTDOWN_GRACE`, then closes the rest.
/// Handshake failures are logged at debug level (scanners are noisy).
pub async fn serve_tls(
    listener: TcpListener,
    router: axum::Router,
    certs: Arc<CertStore>,
    shutdown: CancellationToken,
) {
    let limits = Limits {
        handshake: HANDSHAKE_TIMEOUT,
        grace: SHUTDOWN_GRACE,
        max_connections: MAX_CONNECTIONS,
    };
    serve_with(listener, router, certs, shutdown, limits).await;
}

/// The timeouts and bounds of `serve_tls`, short in tests.
#[derive(Clone, Copy, Debug)]
struct Limits {
    handshake: Duration,
    grace: Duration,
    max_connections: usize,
}

async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    certs: Arc<CertStore>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let config = match certs.server_config() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            // Not serving the public endpoint at all must not go unnoticed.
            tracing::error!(error = %e, "cannot start the TLS listener; shutting down");
            shutdown.cancel();
            return;
        }
    };
    let acceptor = TlsAcceptor::from(config);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();

    loop {
        // Finished connections leave their (unit) results behind.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::error!(error = %e, "TLS listener accept failed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // Taken before the handshake, so that shutdown also waits for (and
        // then closes) connections that are still handshaking.
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let service = TowerToHyperService::new(router.clone());
        conns.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "TLS connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::debug!(
        connections = graceful.count(),
        "TLS listener closed; waiting for open connections"
    );
    if tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = limits.grace.as_secs(),
            "TLS connections still open after the shutdown grace; closing them"
        );
    }
    conns.shutdown().await;
}

/// Errors that concern one incoming connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, KeyPair};

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

    #[tokio::test]
    async fn a_client_that_never_handshakes_is_disconnected() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = Limits {
            handshake: Duration::from_millis(200),
            grace: Duration::from_secs(1),
            max_connections: 4,
        };
        let server = tokio::spawn(serve_with(
            listener,
            axum::Router::new(),
            test_store(dir.path()),
            shutdown.clone(),
            limits,
        ));
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("the server kept a silent client past the handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_the_listener_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_tls(
            listener,
            axum::Router::new(),
            test_store(dir.path()),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
