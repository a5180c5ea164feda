//! The HTTP client of token endpoints: one `client_credentials` request
//! with a signed assertion, and a strict reading of the answer.
//!
//! Owns: the connection (TCP, TLS with the system's roots plus
//! `[tokens] ca_file`, "https unless localhost"), the form it posts, the
//! connect and total timeouts, the 64 KiB cap on the answer, and one typed
//! error per way an answer can be wrong. Does not own: when to call
//! (`cache.rs`), signing the assertion, or what the caller may ask for.
//!
//! One connection per request and no pooling: a token is fetched once per
//! lifetime per key, so a pool would only keep idle sockets open. Redirects
//! are never followed: the assertion's `aud` names this exact URL, and a
//! token endpoint that redirects is misconfigured or hijacked.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Uri;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::token::{AccessToken, ScopeSet};
use crate::config::url::{UrlError, parse_web_url};

/// Largest answer read from a token endpoint (DESIGN §6).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest `Retry-After` honoured: a longer one is cut to this, so that a
/// confused endpoint cannot silence a key for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest `error` / `error_description` kept from an upstream answer.
const MAX_OAUTH_TEXT: usize = 256;
/// The `client_assertion_type` of RFC 7523.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Where the system's trusted roots are found, first match wins (Debian and
/// Ubuntu, Fedora and RHEL, Alpine and OpenSUSE). `SSL_CERT_FILE` comes first.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// Why the trust roots could not be loaded (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// `ca_file` cannot be read or holds no certificate.
    #[error("tokens.ca_file {}: {why}", file.display())]
    CaFile {
        /// The file, as configured.
        file: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The crypto provider refused the TLS configuration.
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a token request failed. Every variant's Display is safe to log and
/// to answer: it never holds the assertion or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The token URL breaks "https unless localhost".
    #[error("token URL refused: {0}")]
    Url(#[from] UrlError),
    /// The connection or TLS handshake failed (DNS, refused, bad
    /// certificate).
    #[error("cannot reach the token endpoint: {0}")]
    Connect(String),
    /// No complete answer within the connect or total timeout.
    #[error("the token endpoint did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// An answer that is not a token: an OAuth error, a 3xx, an HTML page,
    /// a 429 or 503 with `Retry-After`.
    #[error("{}", refusal_text(*status, oauth_error.as_deref(), oauth_error_description.as_deref(), why))]
    Refused {
        /// The HTTP status of the answer.
        status: u16,
        /// `error` of an RFC 6749 §5.2 answer, sanitised and bounded.
        oauth_error: Option<String>,
        /// `error_description` of that answer, sanitised and bounded.
        oauth_error_description: Option<String>,
        /// `Retry-After` of a 429 or 503, at most [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
        /// What was wrong with the answer, in our words.
        why: String,
    },
    /// The answer was longer than [`MAX_ANSWER_BYTES`].
    #[error(
        "the token endpoint's answer (status {status}) is larger than {MAX_ANSWER_BYTES} bytes"
    )]
    TooLarge {
        /// The HTTP status of the answer.
        status: u16,
    },
}

fn refusal_text(status: u16, error: Option<&str>, description: Option<&str>, why: &str) -> String {
    let mut text = format!("the token endpoint answered {status}: {why}");
    if let Some(e) = error {
        text.push_str(&format!(" (error {e:?}"));
        if let Some(d) = description {
            text.push_str(&format!(", {d:?}"));
        }
        text.push(')');
    }
    text
}

impl UpstreamError {
    /// The HTTP status the token endpoint answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamError::Refused { status, .. } | UpstreamError::TooLarge { status } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// `Retry-After` of a 429 or 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The longest token lifetime accepted (a year). SMART tokens live minutes;
/// a larger `expires_in` is a broken or hostile endpoint, and time
/// arithmetic on it would overflow.
pub const MAX_EXPIRES_IN: u64 = 365 * 86_400;

/// A token endpoint's successful answer, checked.
#[derive(Debug)]
pub struct Grant {
    /// `access_token`.
    pub access_token: AccessToken,
    /// `expires_in`, seconds, > 0 and at most [`MAX_EXPIRES_IN`].
    pub expires_in: u64,
    /// `scope` as granted; the scopes asked for when the answer has none
    /// (RFC 6749 §5.1: omitted means identical to the request).
    pub scope: ScopeSet,
}

/// The client of token endpoints: trust roots and timeouts.
#[derive(Clone)]
pub struct Upstream {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client trusting the system's roots and the certificates of
    /// `ca_file`.
    pub fn new(
        ca_file: Option<&Path>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Upstream, RootsError> {
        let mut roots = rustls::RootCertStore::empty();
        let system = std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain(SYSTEM_ROOTS.iter().map(std::path::PathBuf::from))
            .find(|p| p.is_file());
        if let Some(bundle) = system {
            // One unparsable certificate in a system bundle must not cost
            // all the others: add what parses.
            if let Ok(certs) = CertificateDer::pem_file_iter(&bundle) {
                roots.add_parsable_certificates(certs.flatten());
            }
        }
        if let Some(file) = ca_file {
            let fail = |why: String| RootsError::CaFile {
                file: file.to_owned(),
                why,
            };
            let certs: Vec<_> = CertificateDer::pem_file_iter(file)
                .map_err(|e| fail(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| fail(e.to_string()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Upstream {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout,
            timeout,
        })
    }

    /// Posts `assertion` to `token_url` asking for `scope`, and reads the
    /// answer. The whole exchange ends within the total timeout.
    pub async fn fetch(
        &self,
        token_url: &str,
        assertion: &str,
        scope: &ScopeSet,
    ) -> Result<Grant, UpstreamError> {
        let uri = parse_web_url(token_url)?;
        let form = Zeroizing::new(form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", &scope.to_string()),
        ]));
        let (status, headers, body) = tokio::time::timeout(self.timeout, self.exchange(&uri, form))
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))??;
        read_answer(status, &headers, body, scope)
    }

    async fn exchange(
        &self,
        uri: &Uri,
        form: Zeroizing<String>,
    ) -> Result<(u16, hyper::HeaderMap, Zeroizing<Vec<u8>>), UpstreamError> {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect = async {
            let tcp = TcpStream::connect((bare, port))
                .await
                .map_err(|e| UpstreamError::Connect(format!("{host}:{port}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            Ok::<_, UpstreamError>(tcp)
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::Timeout(self.connect_timeout))??;

        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let request = hyper::Request::post(path)
            .header(header::HOST, authority)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .header(
                header::USER_AGENT,
                HeaderValue::from_static(concat!("jwksd/", env!("CARGO_PKG_VERSION"))),
            )
            .body(Full::new(Bytes::from(form.as_bytes().to_vec())))
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;

        if https {
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|e| UpstreamError::Connect(format!("{host}: {e}")))?;
            let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
                .await
                .map_err(|_| UpstreamError::Timeout(self.connect_timeout))?
                .map_err(|e| UpstreamError::Connect(format!("{host}:{port}: TLS: {e}")))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; the answer's body is read
/// up to [`MAX_ANSWER_BYTES`].
async fn send<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, hyper::HeaderMap, Zeroizing<Vec<u8>>), UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    // The connection task ends with the request: dropped with it when the
    // total timeout fires, since the caller drops this future.
    let driver = tokio::spawn(conn);
    let result = async {
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let status = answer.status().as_u16();
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::TooLarge { status }
                } else {
                    UpstreamError::Connect(format!("reading the answer: {e}"))
                }
            })?;
        Ok((
            status,
            parts.headers,
            Zeroizing::new(body.to_bytes().to_vec()),
        ))
    }
    .await;
    driver.abort();
    result
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Keeps printable ASCII of an upstream text, at most
/// [`MAX_OAUTH_TEXT`] characters: it goes into logs and answers.
fn sanitise(text: &str) -> String {
    text.chars()
        .filter(|c| (' '..='~').contains(c))
        .take(MAX_OAUTH_TEXT)
        .collect()
}

/// `Retry-After`: delta-seconds, or an HTTP date counted from the answer's
/// own `Date` (so our clock does not matter); capped.
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs = match text.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
            let now = headers
                .get(header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d.trim()).ok())
                .map_or_else(chrono::Utc::now, |d| d.to_utc());
            u64::try_from((at.to_utc() - now).num_seconds()).unwrap_or(0)
        }
    };
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn is_html(headers: &hyper::HeaderMap, body: &[u8]) -> bool {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("html"));
    let start = String::from_utf8_lossy(&body[..body.len().min(64)]).to_ascii_lowercase();
    declared || start.trim_start().starts_with("<!doctype html") || start.contains("<html")
}

/// Reads a token endpoint's answer strictly (RFC 6749 §5.1 and §5.2).
fn read_answer(
    status: u16,
    headers: &hyper::HeaderMap,
    body: Zeroizing<Vec<u8>>,
    asked: &ScopeSet,
) -> Result<Grant, UpstreamError> {
    let refused = |why: &str, error: Option<&serde_json::Value>| {
        let text = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(|v| v.as_str())
                .map(sanitise)
        };
        UpstreamError::Refused {
            status,
            oauth_error: text("error"),
            oauth_error_description: text("error_description"),
            retry_after: matches!(status, 429 | 503)
                .then(|| retry_after(headers))
                .flatten(),
            why: why.to_owned(),
        }
    };
    let json: Option<serde_json::Value> = serde_json::from_slice(&body)
        .ok()
        .filter(serde_json::Value::is_object);
    if status != 200 {
        let why = if (300..400).contains(&status) {
            "a redirect, which is not followed (the assertion names this exact URL)"
        } else if json.as_ref().is_some_and(|j| j.get("error").is_some()) {
            "an OAuth error"
        } else if is_html(headers, &body) {
            "an HTML page, not a token answer"
        } else {
            "not a token answer"
        };
        return Err(refused(why, json.as_ref()));
    }
    let Some(mut json) = json else {
        let why = if is_html(headers, &body) {
            "an HTML page, not JSON"
        } else {
            "not a JSON object"
        };
        return Err(refused(why, None));
    };
    drop(body);
    if json.get("error").is_some() {
        return Err(refused("an OAuth error with status 200", Some(&json)));
    }
    let token = match json.get_mut("access_token").map(serde_json::Value::take) {
        Some(serde_json::Value::String(t)) => AccessToken::new(t),
        Some(_) => return Err(refused("access_token is not a string", None)),
        None => return Err(refused("access_token is missing", None)),
    };
    // A token goes into an Authorization header: visible ASCII only.
    if token.expose().is_empty() || !token.expose().bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(refused(
            "access_token is empty or holds characters a header cannot carry",
            None,
        ));
    }
    match json.get("token_type").and_then(|v| v.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(refused("token_type is not Bearer", None)),
        None => return Err(refused("token_type is missing", None)),
    }
    let expires_in = match json.get("expires_in") {
        None => return Err(refused("expires_in is missing", None)),
        Some(v) => match v.as_u64() {
            Some(n) if n > MAX_EXPIRES_IN => {
                return Err(refused(
                    "expires_in is over a year: not a lifetime this broker believes",
                    None,
                ));
            }
            Some(n) if n > 0 => n,
            _ => return Err(refused("expires_in is not a positive integer", None)),
        },
    };
    let scope = match json.get("scope") {
        None | Some(serde_json::Value::Null) => asked.clone(),
        Some(serde_json::Value::String(s)) => ScopeSet::parse(s),
        Some(_) => return Err(refused("scope is not a string", None)),
    };
    // Scope minimisation (DESIGN §6): a caller never gets more than it
    // asked for, whatever the endpoint grants.
    if !scope.is_subset_of(asked) {
        let extra: Vec<_> = scope.outside(asked).map(sanitise).collect();
        return Err(refused(
            &format!(
                "granted scopes that were not asked for: {}",
                extra.join(" ")
            ),
            None,
        ));
    }
    Ok(Grant {
        access_token: token,
        expires_in,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Result<Grant, UpstreamError> {
        let mut map = hyper::HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        read_answer(
            status,
            &map,
            Zeroizing::new(body.as_bytes().to_vec()),
            &ScopeSet::parse("a b"),
        )
    }

    fn why(r: Result<Grant, UpstreamError>) -> String {
        match r.unwrap_err() {
            UpstreamError::Refused { why, .. } => why,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_good_answer_is_read_and_scope_defaults_to_the_request() {
        let g = answer(
            200,
            &[],
            r#"{"access_token":"tok-1","token_type":"bearer","expires_in":300}"#,
        )
        .unwrap();
        assert_eq!(g.access_token.expose(), "tok-1");
        assert_eq!((g.expires_in, g.scope.to_string()), (300, "a b".into()));
        let g = answer(
            200,
            &[],
            r#"{"access_token":"t","token_type":"Bearer","expires_in":5,"scope":"a"}"#,
        )
        .unwrap();
        assert_eq!(g.scope.to_string(), "a");
    }

    #[test]
    fn each_bad_answer_has_its_own_reason() {
        let t = |fields: &str| answer(200, &[], &format!("{{{fields}}}"));
        assert_eq!(
            why(t(r#""token_type":"Bearer","expires_in":5"#)),
            "access_token is missing"
        );
        assert_eq!(
            why(t(
                r#""access_token":1,"token_type":"Bearer","expires_in":5"#
            )),
            "access_token is not a string"
        );
        assert!(
            why(t(
                r#""access_token":"a b","token_type":"Bearer","expires_in":5"#
            ))
            .contains("header")
        );
        assert_eq!(
            why(t(r#""access_token":"x","token_type":"MAC","expires_in":5"#)),
            "token_type is not Bearer"
        );
        assert_eq!(
            why(t(r#""access_token":"x","expires_in":5"#)),
            "token_type is missing"
        );
        for bad in ["0", "-5", "1.5", "\"300\""] {
            assert_eq!(
                why(t(&format!(
                    r#""access_token":"x","token_type":"Bearer","expires_in":{bad}"#
                ))),
                "expires_in is not a positive integer",
                "{bad}"
            );
        }
        assert_eq!(
            why(t(r#""access_token":"x","token_type":"Bearer""#)),
            "expires_in is missing"
        );
        // Far beyond any lifetime: refused, never handed to time arithmetic
        // (chrono panics past ~9.2e15 s).
        for huge in ["31536001", "18446744073709551615"] {
            assert_eq!(
                why(t(&format!(
                    r#""access_token":"x","token_type":"Bearer","expires_in":{huge}"#
                ))),
                "expires_in is over a year: not a lifetime this broker believes",
                "{huge}"
            );
        }
        assert_eq!(
            why(t(
                r#""access_token":"x","token_type":"Bearer","expires_in":5,"scope":"a c""#
            )),
            "granted scopes that were not asked for: c"
        );
        assert_eq!(why(answer(200, &[], "not json")), "not a JSON object");
        assert_eq!(why(answer(200, &[], "[1]")), "not a JSON object");
        assert_eq!(
            why(answer(
                200,
                &[("content-type", "text/html")],
                "<html>hi</html>"
            )),
            "an HTML page, not JSON"
        );
    }

    #[test]
    fn an_oauth_error_is_kept_sanitised_and_a_retry_after_honoured() {
        let e = answer(
            400,
            &[("content-type", "application/json")],
            r#"{"error":"invalid_client","error_description":"bad\nkey"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            UpstreamError::Refused {
                status: 400,
                oauth_error: Some("invalid_client".into()),
                oauth_error_description: Some("badkey".into()),
                retry_after: None,
                why: "an OAuth error".into(),
            }
        );
        assert_eq!(
            e.to_string(),
            "the token endpoint answered 400: an OAuth error (error \"invalid_client\", \"badkey\")"
        );
        let e = answer(429, &[("retry-after", "30")], "").unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        let e = answer(503, &[("retry-after", "999999")], "").unwrap_err();
        assert_eq!(e.retry_after(), Some(MAX_RETRY_AFTER));
        let e = answer(
            503,
            &[
                ("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT"),
                ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ],
            "",
        )
        .unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        // Retry-After on other statuses means nothing here.
        assert_eq!(
            answer(500, &[("retry-after", "30")], "")
                .unwrap_err()
                .retry_after(),
            None
        );
        assert!(why(answer(302, &[("location", "https://x/")], "")).contains("redirect"));
        assert!(why(answer(500, &[], "<!DOCTYPE html><p>oops")).contains("HTML"));
    }

    #[test]
    fn the_form_is_url_encoded() {
        assert_eq!(
            form(&[("a", "x y"), ("b", "p/q:r&s=t")]),
            "a=x+y&b=p%2Fq%3Ar%26s%3Dt"
        );
    }

    /// Serves one connection on 127.0.0.1 with `reply` (written in `parts`,
    /// `pause` apart) and hands back the request it read.
    async fn one_shot(
        parts: Vec<Vec<u8>>,
        pause: Duration,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the form (Content-Length of it).
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            for part in parts {
                if conn.write_all(&part).await.is_err() {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, task)
    }

    fn client(total_ms: u64) -> Upstream {
        let mut u = Upstream::new(None, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
        u.timeout = Duration::from_millis(total_ms);
        u
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn the_request_is_a_client_credentials_form_post() {
        let (url, server) = one_shot(
            vec![http(
                "200 OK",
                r#"{"access_token":"tok","token_type":"Bearer","expires_in":60}"#,
            )],
            Duration::ZERO,
        )
        .await;
        let g = client(5000)
            .fetch(&url, "eyJ.a.b", &ScopeSet::parse("system/Patient.rs"))
            .await
            .unwrap();
        assert_eq!(g.access_token.expose(), "tok");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /oauth/token HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/x-www-form-urlencoded"),
            "{request}"
        );
        assert!(request.ends_with(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=eyJ.a.b&scope=system%2FPatient.rs"
        ), "{request}");
    }

    #[tokio::test]
    async fn a_huge_answer_is_cut_at_64_kib() {
        let big = format!(r#"{{"access_token":"{}"}}"#, "x".repeat(MAX_ANSWER_BYTES));
        let (url, _server) = one_shot(vec![http("200 OK", &big)], Duration::ZERO).await;
        let e = client(5000)
            .fetch(&url, "a", &ScopeSet::default())
            .await
            .unwrap_err();
        assert_eq!(e, UpstreamError::TooLarge { status: 200 });
    }

    #[tokio::test]
    async fn a_slow_drip_ends_at_the_total_timeout() {
        let body = r#"{"access_token":"tok","token_type":"Bearer","expires_in":60}"#;
        let whole = http("200 OK", body);
        let parts = whole.chunks(4).map(<[u8]>::to_vec).collect();
        let (url, _server) = one_shot(parts, Duration::from_millis(100)).await;
        let e = client(300)
            .fetch(&url, "a", &ScopeSet::default())
            .await
            .unwrap_err();
        assert_eq!(e, UpstreamError::Timeout(Duration::from_millis(300)));
    }

    #[tokio::test]
    async fn a_dead_endpoint_or_a_plain_http_remote_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = client(5000)
            .fetch(&format!("http://{addr}/t"), "a", &ScopeSet::default())
            .await
            .unwrap_err();
        assert!(matches!(e, UpstreamError::Connect(_)), "{e:?}");
        let e = client(5000)
            .fetch("http://ehr.example.com/t", "a", &ScopeSet::default())
            .await
            .unwrap_err();
        assert_eq!(e, UpstreamError::Url(UrlError::NotHttps));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "nothing here\n").unwrap();
        let e =
            Upstream::new(Some(&file), Duration::from_secs(1), Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "tokens.ca_file {}: holds no PEM certificate",
                file.display()
            )
        );
    }

    /// A TLS token endpoint on 127.0.0.1 for `localhost`, with a
    /// certificate no public root knows; answers one request with a token.
    async fn tls_endpoint(dir: &Path) -> (u16, std::path::PathBuf) {
        use rustls::pki_types::PrivateKeyDer;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca_file = dir.join("ehr-ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let _ = tls.read(&mut buf).await;
                let body = r#"{"access_token":"tls-token","token_type":"Bearer","expires_in":60}"#;
                let _ = tls.write_all(&http("200 OK", body)).await;
                let _ = tls.shutdown().await;
            }
        });
        (port, ca_file)
    }

    #[tokio::test]
    async fn https_needs_the_endpoint_certificate_to_chain_to_a_trusted_root() {
        let dir = tempfile::tempdir().unwrap();
        let (port, ca_file) = tls_endpoint(dir.path()).await;
        let url = format!("https://localhost:{port}/token");
        let secs = Duration::from_secs(5);
        // System roots only: the private CA is unknown.
        let e = Upstream::new(None, secs, secs)
            .unwrap()
            .fetch(&url, "a", &ScopeSet::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Connect(m) if m.contains("TLS")),
            "{e:?}"
        );
        // With tokens.ca_file naming it.
        let g = Upstream::new(Some(&ca_file), secs, secs)
            .unwrap()
            .fetch(&url, "a", &ScopeSet::default())
            .await
            .unwrap();
        assert_eq!(g.access_token.expose(), "tls-token");
        // The name is checked: 127.0.0.1 is not in the certificate.
        let e = Upstream::new(Some(&ca_file), secs, secs)
            .unwrap()
            .fetch(
                &format!("https://127.0.0.1:{port}/token"),
                "a",
                &ScopeSet::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Connect(m) if m.contains("TLS")),
            "{e:?}"
        );
    }
}
