//! The daemon config (`jwksd.toml`): raw serde form -> validated [`Config`].
//! Each refusal is a [`super::check`] error naming the file, the
//! `section.field`, the value and the rule.
//!
//! Owns: parsing, defaults, and resolving relative paths against the config
//! file's directory. Does not own: reading the master key or the policies,
//! resolving `socket_group` (the server does both at start-up), or
//! connecting to the store. Postgres passwords never reach `Debug`,
//! `Display` or an error message.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::check::{self, Checker, FieldError, ReadError, SyntaxError, WritableError};

/// Environment variable naming the config file (before `./jwksd.toml`).
pub const CONFIG_ENV: &str = "JWKSD_CONFIG";
/// The config file looked for in the working directory.
pub const LOCAL_CONFIG_PATH: &str = "jwksd.toml";
/// The system-wide config file, the last fallback.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/jwksd/jwksd.toml";
/// Default `server.listen` (public JWKS listener).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `server.socket`.
pub const DEFAULT_SOCKET: &str = "/run/jwksd/jwksd.sock";
/// Default `server.socket_mode`: owner and group read/write.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default `server.max_connections_per_uid` (lowered to
/// `server.max_connections` when that is smaller): room for an app's
/// worker pool, far from the 1024 connections of the default bound.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 128;
/// Default `store.url`.
pub const DEFAULT_STORE_URL: &str = "sqlite:///var/lib/jwksd/jwksd.db";
/// Default `store.audit_spool` with PostgreSQL.
pub const DEFAULT_AUDIT_SPOOL: &str = "/var/lib/jwksd/audit-spool.jsonl";
/// Default `store.audit_refusals_per_minute` (per peer uid).
pub const DEFAULT_AUDIT_REFUSALS_PER_MINUTE: u32 = 60;
/// Default `store.audit_spool_refusal_bytes`: 1 MiB.
pub const DEFAULT_SPOOL_REFUSAL_BYTES: u64 = 1 << 20;
/// Default `policies.dir`.
pub const DEFAULT_POLICIES_DIR: &str = "/etc/jwksd/policies";

/// Why the daemon config was refused. The Display is the whole message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// TOML syntax error, unknown section or field, or wrong value type.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// A field breaks one of its rules (field `section.field`, e.g.
    /// `server.socket_mode`; Postgres passwords redacted in the value).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Group or others may write the file.
    #[error(transparent)]
    Writable(#[from] WritableError),
}

/// The validated daemon config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was loaded from, as given (used in messages).
    pub file: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[store] url`; default `sqlite:///var/lib/jwksd/jwksd.db`.
    pub store: StoreUrl,
    /// `[store] audit_spool`: where audit records wait while the store does
    /// not answer. Default: `audit-spool.jsonl` next to the SQLite file, or
    /// `/var/lib/jwksd/audit-spool.jsonl` with PostgreSQL.
    pub audit_spool: PathBuf,
    /// `[store] audit_retention`: audit records older than this are pruned
    /// (hourly, by the lease holder), keeping the chain verifiable from an
    /// anchor. `None` (the default): keep everything.
    pub audit_retention: Option<crate::types::Span>,
    /// `[store] audit_refusals_per_minute`: refused requests of one peer
    /// uid recorded one record each, at most this many per minute (a burst
    /// of that many, then refilled evenly); the rest are counted and
    /// summarised. Default 60, 1 to 100000.
    pub audit_refusals_per_minute: u32,
    /// `[store] audit_spool_refusal_bytes`: while the store does not
    /// answer, records of refused requests are spooled only while the
    /// spool is smaller than this (the rest of the disk is the
    /// signatures'). Default 1048576 (1 MiB), 0 to 1073741824.
    pub audit_spool_refusal_bytes: u64,
    /// `[seal] master_key_file`; `None` means the key comes from the
    /// `JWKSD_MASTER_KEY` environment variable.
    pub master_key_file: Option<PathBuf>,
    /// `[policies] dir`; default `/etc/jwksd/policies`.
    pub policies_dir: PathBuf,
    /// `[tokens]`: how the token broker reaches token endpoints.
    pub tokens: TokensConfig,
    /// `[backends.NAME]` tables, in name order: key backends a policy may
    /// name besides the built-in `software`.
    pub backends: Vec<super::backends::BackendConfig>,
}

/// `[tokens]`: the token broker's upstream client (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensConfig {
    /// `ca_file`: PEM certificates trusted for token endpoints besides the
    /// system's roots (a private CA). `None` (the default): system roots
    /// only.
    pub ca_file: Option<PathBuf>,
    /// `connect_timeout`: time to open the TCP connection and finish the
    /// TLS handshake. Default 5 s; between 1 s and 60 s.
    pub connect_timeout: std::time::Duration,
    /// `timeout`: time for a whole upstream request, connecting included,
    /// up to the last byte of the answer (a slow drip ends here). Default
    /// 15 s; between 1 s and 120 s, and at least `connect_timeout`.
    pub timeout: std::time::Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            ca_file: None,
            connect_timeout: std::time::Duration::from_secs(5),
            timeout: std::time::Duration::from_secs(15),
        }
    }
}

/// `[server]`: listeners and the signing socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Public JWKS listener; default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// What EHRs fetch, trailing `/` dropped; https unless loopback. Required.
    pub public_url: String,
    /// PEM certificate chain when jwksd terminates TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key when jwksd terminates TLS (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Listener for `/metrics`, `/healthz`, `/readyz`; off when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// Unix socket path; default `/run/jwksd/jwksd.sock`.
    pub socket: PathBuf,
    /// Socket file mode; default `0o660`; never world-writable.
    pub socket_mode: u32,
    /// Open connections at most on each listener (`server.max_connections`:
    /// public, admin and socket each get this many); further clients wait
    /// in the kernel's backlog. Default 1024, 1 to 100000.
    pub max_connections: usize,
    /// Time an HTTP/1.1 client of any listener has to send a request's
    /// headers, also between keep-alive requests (`server.header_timeout`,
    /// a duration such as `"30s"`); a slower one is disconnected. Default
    /// 30 s; between 1 s and 1 h.
    pub header_timeout: std::time::Duration,
    /// Time a socket request has from the end of its headers to its answer
    /// (`server.request_timeout`): its body must be in by then (else 408)
    /// and an answer not ready by then is a 503. A caller that stalls its
    /// body holds its connection this long at most. Default 30 s; between
    /// 1 s and 1 h.
    pub request_timeout: std::time::Duration,
    /// Open socket connections at most per peer uid
    /// (`server.max_connections_per_uid`), so that one local user cannot
    /// take every connection of `max_connections`; further connections of
    /// that uid are answered 503 at once. Default 128 (or
    /// `max_connections` when that is lower); at most `max_connections`.
    pub max_connections_per_uid: usize,
    /// Group owning the socket; `None` means the daemon's group. Resolved
    /// (and an unknown name refused) at start-up, not here.
    pub socket_group: Option<String>,
}

/// Where keys and audit records live; the scheme picks the backend.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH`, resolved against the config file's directory.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, as written (may hold a
    /// password: printed only through [`redact_url`]).
    Postgres(String),
}

impl fmt::Display for StoreUrl {
    /// The URL with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    /// Like Display: never shows a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreUrl::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

/// Replaces the password of a URL's userinfo, and the value of any query
/// parameter whose name contains "password", with `***`. Errs on the side
/// of hiding: everything up to the last `@` is userinfo, wherever a `?`,
/// `/` or `#` stands before it. A host never holds an `@`, a password typed
/// unencoded may hold any of them; a query value holding an `@` hides the
/// host with it, which costs a message some detail and never a secret.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (head, rest) = url.split_at(scheme_end);
    let mut out = head.to_owned();
    let after_userinfo = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, after) = rest.split_at(at);
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            after
        }
        None => rest,
    };
    let query_at = after_userinfo.find('?').unwrap_or(after_userinfo.len());
    let (host_and_path, query) = after_userinfo.split_at(query_at);
    out.push_str(host_and_path);
    if let Some(params) = query.strip_prefix('?') {
        out.push('?');
        let redacted: Vec<String> = params
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push_str(&redacted.join("&"));
    }
    out
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    store: RawStore,
    seal: RawSeal,
    policies: RawPolicies,
    tokens: RawTokens,
    backends: std::collections::BTreeMap<String, super::backends::RawBackend>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTokens {
    ca_file: Option<String>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    admin_listen: Option<String>,
    socket: Option<String>,
    socket_mode: Option<toml::Value>,
    socket_group: Option<String>,
    max_connections: Option<i64>,
    header_timeout: Option<String>,
    request_timeout: Option<String>,
    max_connections_per_uid: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    url: Option<String>,
    audit_spool: Option<String>,
    audit_retention: Option<String>,
    audit_refusals_per_minute: Option<i64>,
    audit_spool_refusal_bytes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSeal {
    master_key_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPolicies {
    dir: Option<String>,
}

/// `server.listen` and `server.admin_listen`: an IP address and a port.
fn addr(c: &Checker<'_>, field: &str, text: &str) -> Result<SocketAddr, FieldError> {
    text.parse().map_err(|_| {
        c.err(
            field,
            format!("{text:?}"),
            "must be an IP address and port, like \"127.0.0.1:8080\" or \"[::]:8080\"",
        )
    })
}

impl Config {
    /// Reads and validates a config file; refused if group or others may
    /// write it. Relative paths in it are resolved
    /// against the file's directory, made absolute with the current
    /// directory, so they stay right if the daemon later changes directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // It names the store, the master key and the policies: a file that
        // others may write lets them choose what the daemon trusts.
        let (text, writable) = check::read_guarded(path, "config")?;
        if let Some(e) = writable {
            return Err(e.into());
        }
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = absolute.parent().unwrap_or(Path::new(""));
        Config::validate(Checker::with_base(path, base), &text)
    }

    /// Validates config text without I/O; relative paths are resolved
    /// against `file`'s directory as given (so stay relative if it is).
    pub fn from_toml(file: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::validate(Checker::new(file), text)
    }

    fn validate(c: Checker<'_>, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = check::parse_toml(c.file(), text)?;
        Ok(Config::check(&c, raw)?)
    }

    fn check(c: &Checker<'_>, raw: RawConfig) -> Result<Config, FieldError> {
        let s = raw.server;

        let listen = addr(
            c,
            "server.listen",
            s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        )?;
        let admin_listen = match s.admin_listen.as_deref() {
            None => None,
            Some(a) => Some(addr(c, "server.admin_listen", a)?),
        };

        let public_url = match s.public_url.as_deref() {
            None => {
                return Err(c.err(
                    "server.public_url",
                    "(unset)",
                    "required: the base URL EHRs fetch the JWKS from, like \"https://keys.example.com\"",
                ));
            }
            Some(u) => {
                let uri = c.web_url("server.public_url", u)?;
                if uri.query().is_some() {
                    return Err(c.err(
                        "server.public_url",
                        format!("{u:?}"),
                        "must not contain a query: the JWKS paths are appended to it",
                    ));
                }
                u.trim_end_matches('/').to_owned()
            }
        };

        let (tls_cert, tls_key) = match (s.tls_cert.as_deref(), s.tls_key.as_deref()) {
            (Some(cert), Some(key)) => (
                Some(c.path("server.tls_cert", cert)?),
                Some(c.path("server.tls_key", key)?),
            ),
            (None, None) => (None, None),
            (Some(_), None) => {
                return Err(c.err(
                    "server.tls_key",
                    "(unset)",
                    "required when server.tls_cert is set (both or neither)",
                ));
            }
            (None, Some(_)) => {
                return Err(c.err(
                    "server.tls_cert",
                    "(unset)",
                    "required when server.tls_key is set (both or neither)",
                ));
            }
        };

        let socket = c.path(
            "server.socket",
            s.socket.as_deref().unwrap_or(DEFAULT_SOCKET),
        )?;
        let socket_mode = match &s.socket_mode {
            None => DEFAULT_SOCKET_MODE,
            Some(v) => parse_socket_mode(c, v)?,
        };
        let socket_group = match s.socket_group {
            Some(g) if g.is_empty() => {
                return Err(c.err(
                    "server.socket_group",
                    "\"\"",
                    "must not be empty (leave it out to use the daemon's group)",
                ));
            }
            g => g,
        };

        let max_connections = match s.max_connections {
            None => 1024,
            Some(n) => c.within("server.max_connections", n, 1..=100_000)?,
        };
        let header_timeout = timeout(c, "server.header_timeout", s.header_timeout.as_deref())?;
        let request_timeout = timeout(c, "server.request_timeout", s.request_timeout.as_deref())?;
        let max_connections_per_uid = match s.max_connections_per_uid {
            None => DEFAULT_MAX_CONNECTIONS_PER_UID.min(max_connections),
            Some(n) => c
                .within("server.max_connections_per_uid", n, 1..=100_000)
                .and_then(|n: usize| {
                    if n > max_connections {
                        Err(c.err(
                            "server.max_connections_per_uid",
                            n.to_string(),
                            format!("must be <= server.max_connections ({max_connections})"),
                        ))
                    } else {
                        Ok(n)
                    }
                })?,
        };
        let store = parse_store(c, raw.store.url.as_deref().unwrap_or(DEFAULT_STORE_URL))?;
        let audit_retention = raw
            .store
            .audit_retention
            .as_deref()
            .map(|text| c.span("store.audit_retention", text))
            .transpose()?;
        let audit_refusals_per_minute = match raw.store.audit_refusals_per_minute {
            None => DEFAULT_AUDIT_REFUSALS_PER_MINUTE,
            Some(n) => c.within("store.audit_refusals_per_minute", n, 1..=100_000)?,
        };
        let audit_spool_refusal_bytes = match raw.store.audit_spool_refusal_bytes {
            None => DEFAULT_SPOOL_REFUSAL_BYTES,
            Some(n) => c.within("store.audit_spool_refusal_bytes", n, 0..=1 << 30)?,
        };
        let audit_spool = match raw.store.audit_spool.as_deref() {
            Some(p) => c.path("store.audit_spool", p)?,
            // Next to the SQLite file; for PostgreSQL in the state directory.
            None => match &store {
                StoreUrl::Sqlite(db) => db.with_file_name("audit-spool.jsonl"),
                StoreUrl::Postgres(_) => PathBuf::from(DEFAULT_AUDIT_SPOOL),
            },
        };
        let master_key_file = match raw.seal.master_key_file.as_deref() {
            None => None,
            Some(p) => Some(c.path("seal.master_key_file", p)?),
        };
        let policies_dir = c.path(
            "policies.dir",
            raw.policies.dir.as_deref().unwrap_or(DEFAULT_POLICIES_DIR),
        )?;

        let tokens = check_tokens(c, raw.tokens, request_timeout)?;
        let backends = super::backends::check_backends(c, raw.backends)?;

        Ok(Config {
            file: c.file().to_owned(),
            server: ServerConfig {
                listen,
                public_url,
                tls_cert,
                tls_key,
                admin_listen,
                socket,
                socket_mode,
                socket_group,
                max_connections,
                header_timeout,
                request_timeout,
                max_connections_per_uid,
            },
            store,
            audit_spool,
            audit_retention,
            audit_refusals_per_minute,
            audit_spool_refusal_bytes,
            master_key_file,
            policies_dir,
            tokens,
            backends,
        })
    }
}

/// `server.header_timeout` and `server.request_timeout`: a duration
/// between 1 s and 1 h, 30 s when unset.
fn timeout(
    c: &Checker<'_>,
    field: &str,
    text: Option<&str>,
) -> Result<std::time::Duration, FieldError> {
    let Some(text) = text else {
        return Ok(std::time::Duration::from_secs(30));
    };
    crate::types::Span::parse(text)
        .ok()
        .map(|span| std::time::Duration::from_secs(span.as_secs()))
        .filter(|d| (1..=3600).contains(&d.as_secs()))
        .ok_or_else(|| {
            c.err(
                field,
                format!("{text:?}"),
                "must be a duration between 1s and 1h",
            )
        })
}

/// A `[tokens]` duration: `default` when unset, else within `1s..=max_s`.
fn bounded_secs(
    c: &Checker<'_>,
    field: &str,
    text: Option<&str>,
    default: std::time::Duration,
    max_s: u64,
) -> Result<std::time::Duration, FieldError> {
    let Some(text) = text else {
        return Ok(default);
    };
    crate::types::Span::parse(text)
        .ok()
        .map(|span| span.as_secs())
        .filter(|s| (1..=max_s).contains(s))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| {
            c.err(
                field,
                format!("{text:?}"),
                format!("must be a duration between 1s and {max_s}s"),
            )
        })
}

/// `[tokens]`. Unset timeouts default to 15 s and 5 s, shortened to fit
/// under `server.request_timeout`: a token request waits for its upstream
/// call, and the socket's deadline would otherwise answer 503 before the
/// 504 it owes.
fn check_tokens(
    c: &Checker<'_>,
    raw: RawTokens,
    request_timeout: std::time::Duration,
) -> Result<TokensConfig, FieldError> {
    let second = std::time::Duration::from_secs(1);
    let mut defaults = TokensConfig::default();
    defaults.timeout = defaults
        .timeout
        .min(request_timeout.saturating_sub(second).max(second));
    let ca_file = raw
        .ca_file
        .as_deref()
        .map(|p| c.path("tokens.ca_file", p))
        .transpose()?;
    let connect_timeout = bounded_secs(
        c,
        "tokens.connect_timeout",
        raw.connect_timeout.as_deref(),
        defaults.connect_timeout,
        60,
    )?;
    let timeout = bounded_secs(
        c,
        "tokens.timeout",
        raw.timeout.as_deref(),
        defaults.timeout,
        120,
    )?;
    if raw.timeout.is_some() && timeout >= request_timeout {
        return Err(c.err(
            "tokens.timeout",
            format!("{:?}", raw.timeout.as_deref().unwrap_or_default()),
            format!(
                "must be less than server.request_timeout ({}s): a token request is answered within it",
                request_timeout.as_secs()
            ),
        ));
    }
    let connect_timeout = match raw.connect_timeout {
        None => connect_timeout.min(timeout),
        Some(_) => connect_timeout,
    };
    if timeout < connect_timeout {
        return Err(c.err(
            "tokens.timeout",
            raw.timeout.as_deref().map_or_else(
                || format!("(unset: {}s)", timeout.as_secs()),
                |t| format!("{t:?}"),
            ),
            format!(
                "must be at least tokens.connect_timeout ({}s): it bounds the whole request, connecting included",
                connect_timeout.as_secs()
            ),
        ));
    }
    Ok(TokensConfig {
        ca_file,
        connect_timeout,
        timeout,
    })
}

/// `socket_mode`: a quoted octal string such as `"0660"` (or `"0o660"`).
fn parse_socket_mode(c: &Checker<'_>, value: &toml::Value) -> Result<u32, FieldError> {
    const FIELD: &str = "server.socket_mode";
    let shown = value.to_string();
    let text = match value {
        toml::Value::String(s) => s.as_str(),
        toml::Value::Integer(_) => {
            return Err(c.err(
                FIELD,
                shown,
                "must be a quoted octal string like \"0660\" (a bare number is read as decimal)",
            ));
        }
        _ => return Err(c.err(FIELD, shown, "must be a quoted octal string like \"0660\"")),
    };
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(c.err(FIELD, shown, "must be an octal mode like \"0660\""));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| {
        c.err(
            FIELD,
            value.to_string(),
            "must be an octal mode like \"0660\"",
        )
    })?;
    if mode > 0o777 {
        return Err(c.err(
            FIELD,
            shown,
            "must be <= 0777: permission bits only (no setuid, setgid or sticky bit)",
        ));
    }
    if mode & 0o002 != 0 {
        return Err(c.err(
            FIELD,
            shown,
            "must not grant write to others (o+w): connecting to a Unix socket needs write permission, so every local user could reach the signing API",
        ));
    }
    Ok(mode)
}

/// `store.url`: `sqlite://PATH` or `postgres://...` / `postgresql://...`.
fn parse_store(c: &Checker<'_>, url: &str) -> Result<StoreUrl, FieldError> {
    const FIELD: &str = "store.url";
    let shown = || format!("{:?}", redact_url(url));
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(c.err(
                FIELD,
                shown(),
                "sqlite:// needs a path, like \"sqlite:///var/lib/jwksd/jwksd.db\"",
            ));
        }
        if path.contains(['?', '#']) {
            return Err(c.err(
                FIELD,
                shown(),
                "must be sqlite://PATH with no query or fragment",
            ));
        }
        return Ok(StoreUrl::Sqlite(c.resolve(path)));
    }
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"));
    match rest {
        Some(r) if !r.is_empty() => match super::pg_tls::check_url(url) {
            Ok(_) => Ok(StoreUrl::Postgres(url.to_owned())),
            Err(e) => Err(c.err(FIELD, shown(), e.to_string())),
        },
        Some(_) => Err(c.err(
            FIELD,
            shown(),
            "postgres:// needs a host or connection options",
        )),
        None => Err(c.err(
            FIELD,
            shown(),
            "must be sqlite://PATH or postgres://... (postgresql://...)",
        )),
    }
}

/// The config file to use when `--config` is not given: `$JWKSD_CONFIG`
/// (if set and non-empty), else `./jwksd.toml` if it exists, else
/// `/etc/jwksd/jwksd.toml`.
pub fn default_config_path() -> PathBuf {
    choose_config_path(
        std::env::var_os(CONFIG_ENV),
        Path::new(LOCAL_CONFIG_PATH).is_file(),
    )
}

fn choose_config_path(env: Option<OsString>, local_exists: bool) -> PathBuf {
    match env {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if local_exists => PathBuf::from(LOCAL_CONFIG_PATH),
        _ => PathBuf::from(SYSTEM_CONFIG_PATH),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const F: &str = "etc/jwksd.toml";
    const MIN: &str = "[server]\npublic_url = \"https://keys.example.com\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new(F), text)
    }

    /// `[server]` with public_url plus `server_extra`, then `rest` (other sections).
    fn with(server_extra: &str, rest: &str) -> Result<Config, ConfigError> {
        parse(&format!("{MIN}{server_extra}\n{rest}"))
    }

    fn message(r: Result<Config, ConfigError>) -> String {
        match r {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    // ---- happy paths ----

    #[test]
    fn defaults_are_applied_when_only_public_url_is_set() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.file, Path::new(F));
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.public_url, "https://keys.example.com");
        assert_eq!((c.server.tls_cert, c.server.tls_key), (None, None));
        assert_eq!(c.server.admin_listen, None);
        assert_eq!(c.server.socket, Path::new("/run/jwksd/jwksd.sock"));
        assert_eq!(c.server.socket_mode, 0o660);
        assert_eq!(c.server.socket_group, None);
        assert_eq!(c.store, StoreUrl::Sqlite("/var/lib/jwksd/jwksd.db".into()));
        assert_eq!(c.master_key_file, None);
        assert_eq!(c.policies_dir, Path::new("/etc/jwksd/policies"));
    }

    #[test]
    fn tokens_section_has_defaults_and_is_loaded() {
        assert_eq!(parse(MIN).unwrap().tokens, TokensConfig::default());
        let c = with(
            "",
            "[tokens]\nca_file = \"ca/ehr.pem\"\nconnect_timeout = \"2s\"\ntimeout = \"20s\"",
        )
        .unwrap();
        assert_eq!(
            c.tokens.ca_file.as_deref(),
            Some(Path::new("etc/ca/ehr.pem"))
        );
        assert_eq!(c.tokens.connect_timeout.as_secs(), 2);
        assert_eq!(c.tokens.timeout.as_secs(), 20);
    }

    #[test]
    fn tokens_timeout_must_stay_under_the_request_timeout() {
        let c = with("request_timeout = \"5s\"", "").unwrap();
        assert_eq!(
            (
                c.tokens.timeout.as_secs(),
                c.tokens.connect_timeout.as_secs()
            ),
            (4, 4)
        );
        let c = with("request_timeout = \"1s\"", "").unwrap();
        assert_eq!(
            (
                c.tokens.timeout.as_secs(),
                c.tokens.connect_timeout.as_secs()
            ),
            (1, 1)
        );
        assert_eq!(
            message(with(
                "request_timeout = \"15s\"",
                "[tokens]\ntimeout = \"15s\""
            )),
            "etc/jwksd.toml: tokens.timeout = \"15s\": must be less than server.request_timeout (15s): a token request is answered within it"
        );
    }

    #[test]
    fn tokens_timeouts_out_of_range_are_refused_naming_the_field() {
        for (field, bad, max) in [
            ("connect_timeout", "\"0s\"", 60),
            ("connect_timeout", "\"2m\"", 60),
            ("timeout", "\"3m\"", 120),
            ("timeout", "\"soon\"", 120),
        ] {
            assert_eq!(
                message(with("", &format!("[tokens]\n{field} = {bad}"))),
                format!(
                    "etc/jwksd.toml: tokens.{field} = {bad}: must be a duration between 1s and {max}s"
                )
            );
        }
        assert_eq!(
            message(with(
                "",
                "[tokens]\nconnect_timeout = \"20s\"\ntimeout = \"10s\""
            )),
            "etc/jwksd.toml: tokens.timeout = \"10s\": must be at least tokens.connect_timeout (20s): it bounds the whole request, connecting included"
        );
        assert_eq!(
            message(with("", "[tokens]\nca_file = \"\"")),
            "etc/jwksd.toml: tokens.ca_file = \"\": must not be empty"
        );
        assert!(message(with("", "[tokens]\nretries = 3")).contains("unknown field"));
    }

    #[test]
    fn backends_tables_are_loaded_with_defaults_and_relative_paths_resolved() {
        let c = with(
            "",
            "[backends.hsm]\nkind = \"pkcs11\"\nmodule = \"lib/softhsm.so\"\ntoken_label = \"jwksd\"\npin_file = \"hsm.pin\"\n\n[backends.luna]\nkind = \"pkcs11\"\nmodule = \"/usr/lib/libCryptoki2_64.so\"\nslot = 3\nsessions = 8\norphan_grace = \"1h\"",
        )
        .unwrap();
        assert_eq!(c.backends.len(), 2);
        let hsm = &c.backends[0];
        assert_eq!(hsm.name, "hsm");
        assert_eq!(hsm.pkcs11.module, Path::new("etc/lib/softhsm.so"));
        assert_eq!(
            hsm.pkcs11.token,
            crate::config::backends::TokenChoice::Label("jwksd".into())
        );
        assert_eq!(
            hsm.pkcs11.pin_file.as_deref(),
            Some(Path::new("etc/hsm.pin"))
        );
        assert!(hsm.pkcs11.sessions >= 1);
        assert_eq!(
            hsm.pkcs11.orphan_grace,
            crate::config::backends::DEFAULT_ORPHAN_GRACE
        );
        let luna = &c.backends[1];
        assert_eq!(
            luna.pkcs11.token,
            crate::config::backends::TokenChoice::Slot(3)
        );
        assert_eq!(
            (luna.pkcs11.sessions, luna.pkcs11.pin_file.clone()),
            (8, None)
        );
        assert_eq!(luna.pkcs11.orphan_grace.as_secs(), 3600);
        assert!(parse(MIN).unwrap().backends.is_empty());
    }

    #[test]
    fn a_bad_backends_table_is_refused_naming_the_field_and_the_rule() {
        let table = |body: &str| message(with("", &format!("[backends.hsm]\n{body}")));
        let ok = "kind = \"pkcs11\"\nmodule = \"/m.so\"\n";
        assert_eq!(
            table("module = \"/m.so\"\ntoken_label = \"t\""),
            "etc/jwksd.toml: backends.hsm.kind = (unset): required: kind = \"pkcs11\""
        );
        assert_eq!(
            table("kind = \"kms\"\nmodule = \"/m.so\"\ntoken_label = \"t\""),
            "etc/jwksd.toml: backends.hsm.kind = \"kms\": must be \"pkcs11\" (the only kind of backend besides the built-in software one)"
        );
        assert_eq!(
            table("kind = \"pkcs11\"\ntoken_label = \"t\""),
            "etc/jwksd.toml: backends.hsm.module = (unset): required: the path of the token vendor's PKCS#11 library (.so)"
        );
        assert_eq!(
            table(ok),
            "etc/jwksd.toml: backends.hsm.token_label = (unset): required: token_label (or slot) names the token to use"
        );
        assert_eq!(
            table(&format!("{ok}token_label = \"t\"\nslot = 1")),
            "etc/jwksd.toml: backends.hsm.token_label = \"t\": set token_label or slot, not both"
        );
        assert_eq!(
            table(&format!("{ok}slot = -1")),
            format!(
                "etc/jwksd.toml: backends.hsm.slot = -1: must be between 0 and {}",
                u64::MAX
            )
        );
        assert_eq!(
            table(&format!("{ok}token_label = \"t\"\nsessions = 0")),
            "etc/jwksd.toml: backends.hsm.sessions = 0: must be between 1 and 256"
        );
        assert!(
            table(&format!("{ok}token_label = \"t\"\norphan_grace = \"soon\"")).starts_with(
                "etc/jwksd.toml: backends.hsm.orphan_grace = \"soon\": not a duration"
            )
        );
        assert!(
            table(&format!("{ok}token_label = \"t\"\npin = \"1234\"")).contains("unknown field")
        );
        assert_eq!(
            message(with(
                "",
                &format!("[backends.software]\n{ok}token_label = \"t\"")
            )),
            "etc/jwksd.toml: backends = [backends.software]: a backend name is 1 to 63 characters of a-z, 0-9 and '_', and not \"software\" (the built-in backend)"
        );
    }

    #[test]
    fn header_timeout_is_a_bounded_duration() {
        assert_eq!(parse(MIN).unwrap().server.header_timeout.as_secs(), 30);
        let c = with("header_timeout = \"2s\"", "").unwrap();
        assert_eq!(c.server.header_timeout.as_secs(), 2);
        for bad in ["\"0s\"", "\"2h\"", "\"soon\""] {
            let m = message(with(&format!("header_timeout = {bad}"), ""));
            assert!(m.contains("server.header_timeout"), "{m}");
        }
    }

    #[test]
    fn request_timeout_is_a_bounded_duration() {
        assert_eq!(parse(MIN).unwrap().server.request_timeout.as_secs(), 30);
        let c = with("request_timeout = \"5s\"", "").unwrap();
        assert_eq!(c.server.request_timeout.as_secs(), 5);
        for bad in ["\"0s\"", "\"2h\"", "\"soon\""] {
            let m = message(with(&format!("request_timeout = {bad}"), ""));
            assert!(m.contains("server.request_timeout"), "{m}");
        }
    }

    #[test]
    fn max_connections_per_uid_defaults_below_max_connections_and_may_not_exceed_it() {
        assert_eq!(parse(MIN).unwrap().server.max_connections_per_uid, 128);
        // A lower bound on all connections lowers the default with it.
        let c = with("max_connections = 20", "").unwrap();
        assert_eq!(c.server.max_connections_per_uid, 20);
        let c = with("max_connections_per_uid = 8", "").unwrap();
        assert_eq!(c.server.max_connections_per_uid, 8);
        assert_eq!(
            message(with(
                "max_connections = 10\nmax_connections_per_uid = 11",
                ""
            )),
            "etc/jwksd.toml: server.max_connections_per_uid = 11: must be <= server.max_connections (10)"
        );
        let m = message(with("max_connections_per_uid = 0", ""));
        assert!(
            m.contains("server.max_connections_per_uid = 0: must be between 1 and"),
            "{m}"
        );
    }

    #[test]
    fn audit_retention_is_a_duration_named_once_in_its_message() {
        let c = with("", "[store]\naudit_retention = \"90d\"").unwrap();
        assert_eq!(c.audit_retention.map(|s| s.as_secs()), Some(90 * 86_400));
        assert_eq!(
            message(with("", "[store]\naudit_retention = \"7 days\"")),
            "etc/jwksd.toml: store.audit_retention = \"7 days\": not a duration like \"90s\", \"5m\", \"1h30m\", \"7d\" or \"2w\" (units s, m, h, d, w; not zero)"
        );
    }

    #[test]
    fn the_bounds_of_refusal_records_have_defaults_and_ranges() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.audit_refusals_per_minute, 60);
        assert_eq!(c.audit_spool_refusal_bytes, 1 << 20);
        let c = with(
            "",
            "[store]\naudit_refusals_per_minute = 5\naudit_spool_refusal_bytes = 0",
        )
        .unwrap();
        assert_eq!(
            (c.audit_refusals_per_minute, c.audit_spool_refusal_bytes),
            (5, 0)
        );
        assert_eq!(
            message(with("", "[store]\naudit_refusals_per_minute = 0")),
            "etc/jwksd.toml: store.audit_refusals_per_minute = 0: must be between 1 and 100000"
        );
        assert_eq!(
            message(with("", "[store]\naudit_spool_refusal_bytes = -1")),
            "etc/jwksd.toml: store.audit_spool_refusal_bytes = -1: must be between 0 and 1073741824"
        );
    }

    #[test]
    fn design_example_config_is_accepted() {
        let c = parse(
            r#"
[server]
listen      = "127.0.0.1:8080"
public_url  = "https://keys.example.com/"
tls_cert    = "/etc/jwksd/tls.crt"
tls_key     = "/etc/jwksd/tls.key"
admin_listen = "127.0.0.1:9090"
socket      = "/run/jwksd/jwksd.sock"
socket_mode = "0660"
socket_group = "jwksd"

[store]
url = "sqlite:///var/lib/jwksd/jwksd.db"

[seal]
master_key_file = "/etc/jwksd/master.key"

[policies]
dir = "/etc/jwksd/policies"
"#,
        )
        .unwrap();
        assert_eq!(c.server.public_url, "https://keys.example.com");
        assert_eq!(
            c.server.tls_cert.as_deref(),
            Some(Path::new("/etc/jwksd/tls.crt"))
        );
        assert_eq!(
            c.server.tls_key.as_deref(),
            Some(Path::new("/etc/jwksd/tls.key"))
        );
        assert_eq!(
            c.server.admin_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(c.server.socket_group.as_deref(), Some("jwksd"));
        assert_eq!(
            c.master_key_file.as_deref(),
            Some(Path::new("/etc/jwksd/master.key"))
        );
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_directory() {
        let c = with(
            "socket = \"run/jwksd.sock\"\ntls_cert = \"tls/c.pem\"\ntls_key = \"tls/k.pem\"\n",
            "[store]\nurl = \"sqlite://data/jwksd.db\"\n[seal]\nmaster_key_file = \"master.key\"\n[policies]\ndir = \"policies\"\n",
        )
        .unwrap();
        assert_eq!(c.server.socket, Path::new("etc/run/jwksd.sock"));
        assert_eq!(
            c.server.tls_cert.as_deref(),
            Some(Path::new("etc/tls/c.pem"))
        );
        assert_eq!(
            c.server.tls_key.as_deref(),
            Some(Path::new("etc/tls/k.pem"))
        );
        assert_eq!(c.store, StoreUrl::Sqlite("etc/data/jwksd.db".into()));
        assert_eq!(
            c.master_key_file.as_deref(),
            Some(Path::new("etc/master.key"))
        );
        assert_eq!(c.policies_dir, Path::new("etc/policies"));
    }

    #[test]
    fn load_resolves_relative_paths_to_absolute_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwksd.toml");
        fs::write(&file, format!("{MIN}[policies]\ndir = \"policies\"\n")).unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.policies_dir, dir.path().join("policies"));
        assert!(c.policies_dir.is_absolute());
    }

    #[test]
    fn absolute_sqlite_path_and_postgres_urls_are_accepted() {
        let c = with("", "[store]\nurl = \"sqlite:///srv/k.db\"\n").unwrap();
        assert_eq!(c.store, StoreUrl::Sqlite("/srv/k.db".into()));
        for url in [
            "postgres://jwksd@db/jwksd?sslmode=verify-full",
            "postgresql://db.example.com:5432/jwksd?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgres://postgres@127.0.0.1:5432/test",
        ] {
            let c = with("", &format!("[store]\nurl = \"{url}\"\n")).unwrap();
            assert_eq!(c.store, StoreUrl::Postgres(url.into()));
        }
    }

    #[test]
    fn postgres_password_is_redacted_in_debug_and_display() {
        let store = StoreUrl::Postgres(
            "postgres://jwksd:s3cr3t@db.example.com:5432/jwksd?sslmode=require&password=other"
                .into(),
        );
        let shown = store.to_string();
        assert_eq!(
            shown,
            "postgres://jwksd:***@db.example.com:5432/jwksd?sslmode=require&password=***"
        );
        let debug = format!("{store:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("other"),
            "{debug}"
        );
        assert!(debug.contains("jwksd:***@db.example.com"), "{debug}");
        // Also through the whole Config's Debug.
        let c = with(
            "",
            "[store]\nurl = \"postgres://u:s3cr3t@db/x?sslmode=verify-full\"\n",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn redaction_hides_passwords_with_unescaped_specials() {
        assert_eq!(
            redact_url("postgres://u:p@ss/w@rd@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        // A `?`, `#` or `/` in the password does not end the userinfo.
        assert_eq!(
            redact_url("postgres://u:p?ss@h:5432/db?sslmode=verify-full"),
            "postgres://u:***@h:5432/db?sslmode=verify-full"
        );
        assert_eq!(
            redact_url("postgres://u:a#b/c?d@e@h/db?password=x"),
            "postgres://u:***@h/db?password=***"
        );
        // An `@` in a query value: more is hidden, never the secret shown.
        let odd = redact_url("postgres://u:s3cr3t@h/db?application_name=a@b");
        assert!(!odd.contains("s3cr3t"), "{odd}");
        assert_eq!(
            redact_url("postgres://h/db?application_name=a@b"),
            "postgres://h/db?application_name=a@b"
        );
    }

    #[test]
    fn socket_mode_octal_strings_are_parsed() {
        for (text, mode) in [
            ("0660", 0o660),
            ("600", 0o600),
            ("0o640", 0o640),
            ("0775", 0o775),
        ] {
            let c = with(&format!("socket_mode = \"{text}\""), "").unwrap();
            assert_eq!(c.server.socket_mode, mode, "{text}");
        }
    }

    #[test]
    fn config_path_prefers_env_then_local_file_then_etc() {
        assert_eq!(
            choose_config_path(Some("/x/j.toml".into()), true),
            Path::new("/x/j.toml")
        );
        assert_eq!(
            choose_config_path(Some("".into()), true),
            Path::new("jwksd.toml")
        );
        assert_eq!(choose_config_path(None, true), Path::new("jwksd.toml"));
        assert_eq!(
            choose_config_path(None, false),
            Path::new("/etc/jwksd/jwksd.toml")
        );
    }

    // ---- one test per rule ----

    #[test]
    fn syntax_error_names_the_file_and_line() {
        let m = message(parse("[server\n"));
        assert!(m.starts_with("etc/jwksd.toml: line 1, column "), "{m}");
    }

    #[test]
    fn unknown_field_is_refused_with_file_and_line() {
        let m = message(with("listne = \"x\"", ""));
        assert!(
            m.starts_with("etc/jwksd.toml: line 3, column 1: unknown field `listne`"),
            "{m}"
        );
        let m = message(parse("[sever]\n"));
        assert!(m.contains("unknown field `sever`"), "{m}");
    }

    #[test]
    fn missing_public_url_is_refused() {
        assert_eq!(
            message(parse("")),
            "etc/jwksd.toml: server.public_url = (unset): required: the base URL EHRs fetch the JWKS from, like \"https://keys.example.com\""
        );
    }

    #[test]
    fn plain_http_public_url_is_refused_unless_local() {
        assert_eq!(
            message(parse(
                "[server]\npublic_url = \"http://keys.example.com\"\n"
            )),
            "etc/jwksd.toml: server.public_url = \"http://keys.example.com\": must be https unless the host is localhost, 127.0.0.0/8 or ::1"
        );
        let c = parse("[server]\npublic_url = \"http://127.0.0.1:8080/\"\n").unwrap();
        assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn public_url_without_host_or_scheme_is_refused() {
        assert_eq!(
            message(parse("[server]\npublic_url = \"keys.example.com\"\n")),
            "etc/jwksd.toml: server.public_url = \"keys.example.com\": must be an absolute http(s) URL with a host, like \"https://ehr.example.com/token\""
        );
        assert!(
            message(parse("[server]\npublic_url = \"ftp://k.example.com\"\n"))
                .contains("must use https")
        );
    }

    #[test]
    fn public_url_with_query_or_fragment_is_refused() {
        assert_eq!(
            message(parse(
                "[server]\npublic_url = \"https://k.example.com/?a=b\"\n"
            )),
            "etc/jwksd.toml: server.public_url = \"https://k.example.com/?a=b\": must not contain a query: the JWKS paths are appended to it"
        );
        assert!(
            message(parse(
                "[server]\npublic_url = \"https://k.example.com/#x\"\n"
            ))
            .contains("fragment")
        );
    }

    #[test]
    fn listen_that_is_not_an_ip_and_port_is_refused() {
        assert_eq!(
            message(with("listen = \"localhost:8080\"", "")),
            "etc/jwksd.toml: server.listen = \"localhost:8080\": must be an IP address and port, like \"127.0.0.1:8080\" or \"[::]:8080\""
        );
        assert!(
            message(with("admin_listen = \"9090\"", ""))
                .starts_with("etc/jwksd.toml: server.admin_listen = \"9090\": ")
        );
    }

    #[test]
    fn tls_cert_without_key_is_refused() {
        assert_eq!(
            message(with("tls_cert = \"c.pem\"", "")),
            "etc/jwksd.toml: server.tls_key = (unset): required when server.tls_cert is set (both or neither)"
        );
    }

    #[test]
    fn tls_key_without_cert_is_refused() {
        assert_eq!(
            message(with("tls_key = \"k.pem\"", "")),
            "etc/jwksd.toml: server.tls_cert = (unset): required when server.tls_key is set (both or neither)"
        );
    }

    #[test]
    fn world_writable_socket_mode_is_refused_with_the_reason() {
        assert_eq!(
            message(with("socket_mode = \"0666\"", "")),
            "etc/jwksd.toml: server.socket_mode = \"0666\": must not grant write to others (o+w): connecting to a Unix socket needs write permission, so every local user could reach the signing API"
        );
    }

    #[test]
    fn socket_mode_above_0777_is_refused() {
        assert_eq!(
            message(with("socket_mode = \"1770\"", "")),
            "etc/jwksd.toml: server.socket_mode = \"1770\": must be <= 0777: permission bits only (no setuid, setgid or sticky bit)"
        );
    }

    #[test]
    fn socket_mode_that_is_not_octal_is_refused() {
        assert_eq!(
            message(with("socket_mode = \"0680\"", "")),
            "etc/jwksd.toml: server.socket_mode = \"0680\": must be an octal mode like \"0660\""
        );
        assert!(message(with("socket_mode = \"\"", "")).contains("must be an octal mode"));
    }

    #[test]
    fn socket_mode_as_bare_number_is_refused_as_ambiguous() {
        assert_eq!(
            message(with("socket_mode = 660", "")),
            "etc/jwksd.toml: server.socket_mode = 660: must be a quoted octal string like \"0660\" (a bare number is read as decimal)"
        );
    }

    #[test]
    fn empty_socket_group_is_refused() {
        assert_eq!(
            message(with("socket_group = \"\"", "")),
            "etc/jwksd.toml: server.socket_group = \"\": must not be empty (leave it out to use the daemon's group)"
        );
    }

    #[test]
    fn empty_path_is_refused_naming_the_field() {
        assert_eq!(
            message(with("socket = \"\"", "")),
            "etc/jwksd.toml: server.socket = \"\": must not be empty"
        );
        assert!(
            message(with("", "[seal]\nmaster_key_file = \"\"\n"))
                .contains("seal.master_key_file = \"\"")
        );
        assert!(message(with("", "[policies]\ndir = \"\"\n")).contains("policies.dir = \"\""));
    }

    #[test]
    fn store_url_with_unknown_scheme_is_refused_and_redacted() {
        assert_eq!(
            message(with("", "[store]\nurl = \"mysql://root:hunter2@db/x\"\n")),
            "etc/jwksd.toml: store.url = \"mysql://root:***@db/x\": must be sqlite://PATH or postgres://... (postgresql://...)"
        );
        assert!(
            message(with("", "[store]\nurl = \"/var/lib/jwksd.db\"\n"))
                .contains("must be sqlite://PATH")
        );
    }

    #[test]
    fn sqlite_url_without_path_is_refused() {
        assert_eq!(
            message(with("", "[store]\nurl = \"sqlite://\"\n")),
            "etc/jwksd.toml: store.url = \"sqlite://\": sqlite:// needs a path, like \"sqlite:///var/lib/jwksd/jwksd.db\""
        );
    }

    #[test]
    fn sqlite_url_with_query_is_refused() {
        assert_eq!(
            message(with("", "[store]\nurl = \"sqlite:///k.db?mode=rwc\"\n")),
            "etc/jwksd.toml: store.url = \"sqlite:///k.db?mode=rwc\": must be sqlite://PATH with no query or fragment"
        );
    }

    #[test]
    fn postgres_url_without_anything_after_the_scheme_is_refused() {
        assert_eq!(
            message(with("", "[store]\nurl = \"postgres://\"\n")),
            "etc/jwksd.toml: store.url = \"postgres://\": postgres:// needs a host or connection options"
        );
    }

    #[test]
    fn postgres_on_a_network_host_without_verify_full_is_refused_and_redacted() {
        assert_eq!(
            message(with(
                "",
                "[store]\nurl = \"postgres://jwksd:s3cr3t@db.example.com/jwksd?sslmode=require\"\n"
            )),
            "etc/jwksd.toml: store.url = \"postgres://jwksd:***@db.example.com/jwksd?sslmode=require\": host db.example.com is not loopback, so the server must be authenticated: add sslmode=verify-full (with sslrootcert=FILE for a private CA); sslmode is require, which encrypts but accepts any certificate. Only localhost, 127.0.0.0/8, ::1 and a Unix socket directory are exempt"
        );
        let m = message(with(
            "",
            "[store]\nurl = \"postgres://jwksd:s3cr3t@db.example.com/jwksd\"\n",
        ));
        assert!(
            m.starts_with("etc/jwksd.toml: store.url = ") && m.contains("sslmode is prefer"),
            "{m}"
        );
        assert!(!m.contains("s3cr3t"), "{m}");
    }

    #[test]
    fn unreadable_config_file_names_the_file() {
        let m = Config::load(Path::new("/nonexistent/jwksd.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            m.starts_with("/nonexistent/jwksd.toml: cannot read config file: "),
            "{m}"
        );
    }
}
