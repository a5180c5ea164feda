//! Policy files (`policies/*.toml`, one key set each): the raw serde form,
//! the rules of a policy, and the validated [`Policy`] the rest of the
//! daemon works from. How a refusal reads, and the field rules it shares
//! with the daemon config, are [`super::check`]'s. What a [`Schedule`]
//! means in time (its arithmetic) is the lifecycle's: `lifecycle::schedule`.
//!
//! Owns: parsing and checking policies, resolving caller user/group names to
//! ids at load. Does not own: deciding transitions (the lifecycle does), or
//! reloading (a daemon that fails to load a new [`Policies`] keeps the old).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::Deserialize;

use super::check::{self, Checker, FieldError, ReadError, SyntaxError, WritableError};
use crate::types::{Alg, SetName, Span};

/// Default `algorithms`: both, RS384 first (so `sign` defaults to RS384).
pub const DEFAULT_ALGORITHMS: [Alg; 2] = Alg::ALL;
/// The backend of a policy that names none: keys sealed in the store.
pub const SOFTWARE_BACKEND: &str = "software";

/// Whether `name` can name a backend: the shape of a set name (1 to 63
/// characters of a-z, 0-9 and '_'), so it reads the same in a policy, a
/// `[backends.NAME]` table, a log line and a metric label.
pub fn is_backend_name(name: &str) -> bool {
    crate::types::SetName::new(name).is_ok()
}

/// Default `rsa_bits`.
pub const DEFAULT_RSA_BITS: u32 = 4096;
/// RSA modulus sizes aws-lc-rs can generate; `rsa_bits` must be one of them.
pub const RSA_BITS_ALLOWED: [u32; 4] = [2048, 3072, 4096, 8192];
/// Default `timezone` for `rotate`.
pub const DEFAULT_TIMEZONE: Tz = Tz::UTC;
/// Default `publish_ahead`: 2 days.
pub const DEFAULT_PUBLISH_AHEAD: Span = Span::from_secs(2 * 86_400);
/// Default `grace`: 7 days.
pub const DEFAULT_GRACE: Span = Span::from_secs(7 * 86_400);
/// Default `jwks_max_age` (the `Cache-Control: max-age` of the JWKS): 1 hour.
pub const DEFAULT_JWKS_MAX_AGE: Span = Span::from_secs(3600);
/// Default `assertion_lifetime`: 4 minutes. SMART and Epic refuse an `exp`
/// more than 5 minutes ahead; at exactly 5 a verifier whose clock is a
/// second behind ours refuses every assertion, so the default keeps a
/// minute of margin (the 5-minute ceiling stays for those who want it).
pub const DEFAULT_ASSERTION_LIFETIME: Span = Span::from_secs(240);
/// Upper bound of `assertion_lifetime`: 5 minutes (SMART Backend Services).
pub const MAX_ASSERTION_LIFETIME: Span = Span::from_secs(300);
/// Default `clock_skew`: 1 minute.
pub const DEFAULT_CLOCK_SKEW: Span = Span::from_secs(60);

/// Why a policy file, or a set of them, was refused. The Display is the
/// whole message: `<file>: <field> = <value>: <rule>` for a bad value.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The policy directory could not be listed.
    #[error("{}: cannot read policy directory: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The policy directory holds no `*.toml` file.
    #[error("{}: no policy files (*.toml) in this directory; a daemon needs at least one", dir.display())]
    EmptyDir {
        /// The directory.
        dir: PathBuf,
    },
    /// [`Policies::load_files`] was given no file.
    #[error("no policy files given")]
    NoFiles,
    /// TOML syntax error, unknown field or wrong value type.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// A field breaks one of its rules (field e.g. `grace` or
    /// `clients[1].audiences[0]`), including a set name or client_id that
    /// another policy file already uses.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Group or others may write a policy file or the policy directory.
    #[error(transparent)]
    Writable(#[from] WritableError),
    /// Several files failed; one line per problem.
    #[error("{}", join_lines(.0))]
    Many(Vec<PolicyError>),
}

fn join_lines(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl PolicyError {
    /// Every single problem, flattening [`PolicyError::Many`].
    pub fn problems(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Many(all) => all.iter().flat_map(|e| e.problems()).collect(),
            one => vec![one],
        }
    }
}

/// One client that may have assertions signed with this set's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPolicy {
    /// `iss` and `sub` of its assertions; printable ASCII without spaces.
    pub client_id: String,
    /// Exact token endpoint URLs allowed as `aud` (https unless loopback).
    pub audiences: Vec<String>,
    /// Whether assertions carry a `jku` header pointing at this set's JWKS.
    /// Default false.
    pub jku: bool,
    /// The scopes the token broker may ask for on this client's behalf
    /// (`scopes`, RFC 6749 scope tokens); a token request names a subset.
    /// Default empty: no access token for this client.
    pub scopes: Vec<String>,
    /// Upstream token requests per minute at most, per (client, token URL)
    /// (`token_requests_per_minute`). Default 50 (athenahealth's production
    /// limit), 1 to 10000.
    pub token_requests_per_minute: u32,
}

/// `token_requests_per_minute` when a client does not say.
pub const DEFAULT_TOKEN_REQUESTS_PER_MINUTE: u32 = 50;

/// Whether `s` is an RFC 6749 §3.3 scope token: one or more of `%x21`,
/// `%x23-5B`, `%x5D-7E` (printable ASCII but space, `"` and `\`).
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

/// How a socket caller is recognised from its kernel peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerMatch {
    /// Peer uid equals this (from `uid`, or `user` resolved at load).
    Uid(u32),
    /// The peer's primary gid or one of its supplementary groups equals
    /// this (from `gid`, or `group` resolved at load).
    Gid(u32),
}

/// One `[[callers]]` entry: who may use the socket for which clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPolicy {
    /// Which peers this entry covers.
    pub matcher: CallerMatch,
    /// client_ids (all in this policy) the caller may sign for.
    pub clients: Vec<String>,
    /// Whether the caller may rotate and revoke this set's keys. Default false.
    pub admin: bool,
    /// Signature requests one caller (peer uid) may have in flight; more
    /// wait in the caller's own queue (`max_queued`), so a flooding caller
    /// only ever waits behind itself. Default 16, 1 to 10000.
    pub max_concurrent: u32,
    /// Signature requests of one caller that may wait for one of its
    /// `max_concurrent` slots (first come, first served); more are refused
    /// with 429 at once. Default 64, 0 (refuse at once) to 10000.
    pub max_queued: u32,
    /// How long a queued request waits for a slot before it is refused with
    /// 429. Default 5 s, 1 s to 5 min.
    pub queue_timeout: Span,
    /// Signature requests per second one caller may make (a token bucket
    /// with a burst of the same size); `None` (default): unlimited.
    pub max_per_second: Option<u32>,
}

/// Default of `[[callers]] max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: u32 = 16;
/// Default of `[[callers]] max_queued`: an app whose 32 (or up to 80)
/// workers all start at once is served, not refused.
pub const DEFAULT_MAX_QUEUED: u32 = 64;
/// Default of `[[callers]] queue_timeout`, in seconds.
pub const DEFAULT_QUEUE_TIMEOUT_S: u64 = 5;

/// When keys of a set rotate.
// One Schedule per policy: its size does not matter, and the agreed API
// holds `croner::Cron` unboxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `rotate`: a 5- or 6-field cron expression evaluated in `tz`.
    Cron {
        /// The expression as written.
        expr: String,
        /// The parsed expression.
        cron: Cron,
        /// `timezone` (default UTC).
        tz: Tz,
    },
    /// `rotate_every`: a fixed period counted from the current key's activation.
    Every(Span),
}

impl fmt::Display for Schedule {
    /// `rotate = "<expr>" (<tz>)` or `rotate_every = <span>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { expr, tz, .. } => write!(f, "rotate = {expr:?} ({tz})"),
            Schedule::Every(span) => write!(f, "rotate_every = {span}"),
        }
    }
}

/// A validated policy file: one key set.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it was loaded from, as given (used in messages).
    pub file: PathBuf,
    /// `name`: the set name (`default` is served at `/.well-known/jwks.json`).
    pub name: SetName,
    /// `algorithms`: default RS384 then ES384; non-empty, no duplicates.
    pub algorithms: Vec<Alg>,
    /// `rsa_bits`: default 4096; one of 2048, 3072, 4096, 8192.
    pub rsa_bits: u32,
    /// `backend`: where new keys of this set are generated and held:
    /// `software` (the default: sealed in the store) or the name of a
    /// `[backends.NAME]` table of `jwksd.toml` (checked when the daemon
    /// loads the policy: a policy file alone does not know the config).
    pub backend: String,
    /// `rotate` + `timezone`, or `rotate_every`.
    pub schedule: Schedule,
    /// `publish_ahead`: default 2d; >= `jwks_max_age`.
    pub publish_ahead: Span,
    /// `grace`: default 7d; >= `assertion_lifetime + jwks_max_age + clock_skew`.
    pub grace: Span,
    /// `jwks_max_age`: default 1h; the JWKS `Cache-Control: max-age`.
    pub jwks_max_age: Span,
    /// `assertion_lifetime`: default 4m; at most 5m.
    pub assertion_lifetime: Span,
    /// `clock_skew`: default 1m; how far verifiers' clocks may be off.
    pub clock_skew: Span,
    /// `[[clients]]`, in file order, client_ids unique.
    pub clients: Vec<ClientPolicy>,
    /// `[[callers]]`, in file order.
    pub callers: Vec<CallerPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<String>,
    algorithms: Option<Vec<String>>,
    rsa_bits: Option<i64>,
    backend: Option<String>,
    rotate: Option<String>,
    rotate_every: Option<String>,
    timezone: Option<String>,
    publish_ahead: Option<String>,
    grace: Option<String>,
    jwks_max_age: Option<String>,
    assertion_lifetime: Option<String>,
    clock_skew: Option<String>,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    callers: Vec<RawCaller>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    client_id: Option<String>,
    audiences: Option<Vec<String>>,
    #[serde(default)]
    jku: bool,
    #[serde(default)]
    scopes: Vec<String>,
    token_requests_per_minute: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    uid: Option<i64>,
    gid: Option<i64>,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    clients: Vec<String>,
    #[serde(default)]
    admin: bool,
    max_concurrent: Option<i64>,
    max_per_second: Option<i64>,
    max_queued: Option<i64>,
    queue_timeout: Option<String>,
}

/// Below this `jwks_max_age`, `policy check` and `serve` warn: oidc-provider
/// keeps a JWKS at least 60 s whatever `max-age` says (measured: a new kid
/// refused for 61 s with `max-age=0`), so a shorter age promises verifiers
/// a freshness some do not give.
pub const WARN_JWKS_MAX_AGE_UNDER: Span = Span::from_secs(60);
/// Below this `publish_ahead`, `policy check` and `serve` warn: verifiers
/// cache a JWKS for minutes (PyJWKClient 5, jose 10) and refetch on an
/// unknown kid at most every 30 s or so, so a key that signs sooner after
/// it was published may be refused by one of them.
pub const WARN_PUBLISH_AHEAD_UNDER: Span = Span::from_secs(300);

impl Policy {
    /// What is valid but risky with real verifiers, one line each naming
    /// the file, the field, its value and why. Warnings, not refusals:
    /// tests and labs run short policies on purpose.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let file = self.file.display();
        if self.jwks_max_age < WARN_JWKS_MAX_AGE_UNDER {
            out.push(format!(
                "{file}: jwks_max_age = {}: under {WARN_JWKS_MAX_AGE_UNDER}; some verifiers (oidc-provider) keep a JWKS at least 60 s whatever max-age says",
                self.jwks_max_age
            ));
        }
        if self.publish_ahead < WARN_PUBLISH_AHEAD_UNDER {
            out.push(format!(
                "{file}: publish_ahead = {}: under {WARN_PUBLISH_AHEAD_UNDER}; verifiers cache a JWKS for minutes and may refuse a key that signs this soon after it is published",
                self.publish_ahead
            ));
        }
        out
    }

    /// Reads and validates one policy file. Errors name `path` as given.
    pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
        let text = check::read(path, "policy")?;
        Policy::from_toml(path, &text)
    }

    /// Validates policy text; `file` is only used in messages and stored in
    /// [`Policy::file`]. No I/O except resolving `user`/`group` names.
    /// Returns the first problem found.
    pub fn from_toml(file: &Path, text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = check::parse_toml(file, text)?;
        Ok(Policy::check(&Checker::new(file), raw)?)
    }

    fn check(c: &Checker<'_>, raw: RawPolicy) -> Result<Policy, FieldError> {
        let name = match raw.name.as_deref() {
            None => {
                return Err(c.err(
                    "name",
                    "(unset)",
                    "required: the key set name, e.g. \"default\"",
                ));
            }
            Some(n) => SetName::new(n).map_err(|_| {
                c.err(
                    "name",
                    format!("{n:?}"),
                    "must be 1 to 63 characters of a-z, 0-9 and '_', starting with a letter or digit",
                )
            })?,
        };

        let algorithms = match raw.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    return Err(c.err(
                        "algorithms",
                        "[]",
                        "must list at least one of \"RS384\", \"ES384\"",
                    ));
                }
                let mut algs = Vec::with_capacity(list.len());
                for (i, a) in list.iter().enumerate() {
                    let alg: Alg = a.parse().map_err(|_| {
                        c.err(
                            format!("algorithms[{i}]"),
                            format!("{a:?}"),
                            "must be \"RS384\" or \"ES384\"",
                        )
                    })?;
                    if algs.contains(&alg) {
                        return Err(c.err(
                            format!("algorithms[{i}]"),
                            format!("{a:?}"),
                            "listed twice",
                        ));
                    }
                    algs.push(alg);
                }
                algs
            }
        };

        let rsa_bits = match raw.rsa_bits {
            None => DEFAULT_RSA_BITS,
            Some(bits) if bits < 2048 => {
                return Err(c.err("rsa_bits", bits.to_string(), "must be >= 2048"));
            }
            Some(bits) => match u32::try_from(bits) {
                Ok(b) if RSA_BITS_ALLOWED.contains(&b) => b,
                _ => {
                    return Err(c.err(
                        "rsa_bits",
                        bits.to_string(),
                        "must be one of 2048, 3072, 4096, 8192 (the sizes aws-lc-rs generates)",
                    ));
                }
            },
        };

        let backend = match raw.backend.as_deref() {
            None => SOFTWARE_BACKEND.to_owned(),
            Some(b) if is_backend_name(b) => b.to_owned(),
            Some(b) => {
                return Err(c.err(
                    "backend",
                    format!("{b:?}"),
                    "must be \"software\" or the name of a [backends.NAME] table of jwksd.toml (1 to 63 characters of a-z, 0-9 and '_')",
                ));
            }
        };

        let tz = match raw.timezone.as_deref() {
            None => DEFAULT_TIMEZONE,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                c.err(
                    "timezone",
                    format!("{name:?}"),
                    "not an IANA time zone name like \"UTC\" or \"America/New_York\"",
                )
            })?,
        };

        let schedule = match (raw.rotate, raw.rotate_every) {
            (Some(expr), None) => Schedule::Cron {
                cron: parse_cron(c, &expr, tz)?,
                expr,
                tz,
            },
            (None, Some(every)) => {
                if let Some(name) = raw.timezone.as_deref() {
                    return Err(c.err(
                        "timezone",
                        format!("{name:?}"),
                        "only applies to rotate; rotate_every counts from the current key's activation",
                    ));
                }
                Schedule::Every(c.span("rotate_every", &every)?)
            }
            (Some(expr), Some(every)) => {
                return Err(c.err(
                    "rotate",
                    format!("{expr:?}"),
                    format!("rotate and rotate_every = {every:?} are exclusive; keep one"),
                ));
            }
            (None, None) => {
                return Err(c.err(
                    "rotate",
                    "(unset)",
                    "one of rotate (cron, e.g. \"0 0 3 1 * *\") or rotate_every (e.g. \"30d\") is required",
                ));
            }
        };

        let publish_ahead = c.span_or(
            "publish_ahead",
            raw.publish_ahead.as_deref(),
            DEFAULT_PUBLISH_AHEAD,
        )?;
        let grace = c.span_or("grace", raw.grace.as_deref(), DEFAULT_GRACE)?;
        let jwks_max_age = c.span_or(
            "jwks_max_age",
            raw.jwks_max_age.as_deref(),
            DEFAULT_JWKS_MAX_AGE,
        )?;
        let assertion_lifetime = c.span_or(
            "assertion_lifetime",
            raw.assertion_lifetime.as_deref(),
            DEFAULT_ASSERTION_LIFETIME,
        )?;
        let clock_skew = c.span_or("clock_skew", raw.clock_skew.as_deref(), DEFAULT_CLOCK_SKEW)?;

        if assertion_lifetime > MAX_ASSERTION_LIFETIME {
            return Err(c.err(
                "assertion_lifetime",
                assertion_lifetime.to_string(),
                format!("must be <= {MAX_ASSERTION_LIFETIME}"),
            ));
        }
        if publish_ahead < jwks_max_age {
            return Err(c.err(
                "publish_ahead",
                publish_ahead.to_string(),
                format!(
                    "must be >= jwks_max_age ({jwks_max_age}), so that a verifier's cached JWKS already holds a key when it starts signing"
                ),
            ));
        }
        let needed = Span::from_secs(
            assertion_lifetime.as_secs() + jwks_max_age.as_secs() + clock_skew.as_secs(),
        );
        if grace < needed {
            return Err(c.err(
                "grace",
                grace.to_string(),
                format!(
                    "must be >= assertion_lifetime + jwks_max_age + clock_skew ({assertion_lifetime} + {jwks_max_age} + {clock_skew} = {needed})"
                ),
            ));
        }

        let clients = check_clients(c, raw.clients)?;
        let callers = check_callers(c, raw.callers, &clients)?;

        Ok(Policy {
            file: c.file().to_owned(),
            name,
            algorithms,
            rsa_bits,
            backend,
            schedule,
            publish_ahead,
            grace,
            jwks_max_age,
            assertion_lifetime,
            clock_skew,
            clients,
            callers,
        })
    }

    /// The client with this client_id, if this policy defines it.
    pub fn client(&self, client_id: &str) -> Option<&ClientPolicy> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

fn parse_cron(c: &Checker<'_>, expr: &str, tz: Tz) -> Result<Cron, FieldError> {
    let value = format!("{expr:?}");
    let fields = expr.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(c.err(
            "rotate",
            value,
            format!(
                "must have 5 fields (minute hour day month weekday) or 6 (second first); found {fields}"
            ),
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            c.err(
                "rotate",
                value.clone(),
                format!("not a cron expression: {e}"),
            )
        })?;
    // Without a year field a pattern repeats at least every 400 years, so
    // one point after a fixed date means points forever. The fixed date
    // keeps loading independent of the wall clock.
    let anchor = NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| tz.from_utc_datetime(&t));
    let found = anchor.is_some_and(|a| cron.find_next_occurrence(&a, true).is_ok());
    if !found {
        return Err(c.err("rotate", value, "never matches a real date and time"));
    }
    Ok(cron)
}

fn check_clients(c: &Checker<'_>, raw: Vec<RawClient>) -> Result<Vec<ClientPolicy>, FieldError> {
    let mut clients: Vec<ClientPolicy> = Vec::with_capacity(raw.len());
    for (i, rc) in raw.into_iter().enumerate() {
        let field = format!("clients[{i}].client_id");
        let Some(client_id) = rc.client_id else {
            return Err(c.err(field, "(unset)", "required"));
        };
        c.non_empty(&field, &client_id)?;
        if !client_id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(c.err(
                field,
                format!("{client_id:?}"),
                "must be printable ASCII without spaces",
            ));
        }
        if let Some(j) = clients.iter().position(|o| o.client_id == client_id) {
            return Err(c.err(
                field,
                format!("{client_id:?}"),
                format!("already defined at clients[{j}]; client_ids are unique"),
            ));
        }
        let field = format!("clients[{i}].audiences");
        let audiences = match rc.audiences {
            None => return Err(c.err(field, "(unset)", "required: the exact token endpoint URLs")),
            Some(a) if a.is_empty() => {
                return Err(c.err(
                    field,
                    "[]",
                    "must list at least one exact token endpoint URL",
                ));
            }
            Some(a) => a,
        };
        for (k, aud) in audiences.iter().enumerate() {
            c.web_url(&format!("{field}[{k}]"), aud)?;
        }
        for (k, scope) in rc.scopes.iter().enumerate() {
            let field = format!("clients[{i}].scopes[{k}]");
            if !is_scope_token(scope) {
                return Err(c.err(
                    field,
                    format!("{scope:?}"),
                    "must be one scope token: printable ASCII without spaces, '\"' or '\\' (list several scopes as several strings)",
                ));
            }
            if let Some(j) = rc.scopes[..k].iter().position(|o| o == scope) {
                return Err(c.err(
                    field,
                    format!("{scope:?}"),
                    format!("already listed at clients[{i}].scopes[{j}]"),
                ));
            }
        }
        let token_requests_per_minute = match rc.token_requests_per_minute {
            None => DEFAULT_TOKEN_REQUESTS_PER_MINUTE,
            Some(n) => c.within(
                &format!("clients[{i}].token_requests_per_minute"),
                n,
                1..=10_000,
            )?,
        };
        clients.push(ClientPolicy {
            client_id,
            audiences,
            jku: rc.jku,
            scopes: rc.scopes,
            token_requests_per_minute,
        });
    }
    Ok(clients)
}

fn check_callers(
    c: &Checker<'_>,
    raw: Vec<RawCaller>,
    clients: &[ClientPolicy],
) -> Result<Vec<CallerPolicy>, FieldError> {
    let mut callers = Vec::with_capacity(raw.len());
    for (i, rc) in raw.into_iter().enumerate() {
        let set: Vec<&str> = [
            ("uid", rc.uid.is_some()),
            ("gid", rc.gid.is_some()),
            ("user", rc.user.is_some()),
            ("group", rc.group.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, present)| present.then_some(n))
        .collect();
        if set.len() != 1 {
            return Err(c.err(
                format!("callers[{i}]"),
                format!("{{{}}}", set.join(", ")),
                "must set exactly one of uid, gid, user, group",
            ));
        }
        // u32::MAX is the "no id" value of chown and setuid, never a real one.
        let id =
            |field: &str, v: i64| c.within(&format!("callers[{i}].{field}"), v, 0..=u32::MAX - 1);
        let matcher = if let Some(uid) = rc.uid {
            CallerMatch::Uid(id("uid", uid)?)
        } else if let Some(gid) = rc.gid {
            CallerMatch::Gid(id("gid", gid)?)
        } else if let Some(user) = rc.user.as_deref() {
            let field = format!("callers[{i}].user");
            match nix::unistd::User::from_name(user) {
                Ok(Some(u)) => CallerMatch::Uid(u.uid.as_raw()),
                Ok(None) => {
                    return Err(c.err(field, format!("{user:?}"), "no such user on this host"));
                }
                Err(e) => {
                    return Err(c.err(
                        field,
                        format!("{user:?}"),
                        format!("cannot look up user: {e}"),
                    ));
                }
            }
        } else if let Some(group) = rc.group.as_deref() {
            let field = format!("callers[{i}].group");
            match nix::unistd::Group::from_name(group) {
                Ok(Some(g)) => CallerMatch::Gid(g.gid.as_raw()),
                Ok(None) => {
                    return Err(c.err(field, format!("{group:?}"), "no such group on this host"));
                }
                Err(e) => {
                    return Err(c.err(
                        field,
                        format!("{group:?}"),
                        format!("cannot look up group: {e}"),
                    ));
                }
            }
        } else {
            // Unreachable: exactly one of the four is set (checked above).
            return Err(c.err(
                format!("callers[{i}]"),
                "{}",
                "must set exactly one of uid, gid, user, group",
            ));
        };
        for (k, id) in rc.clients.iter().enumerate() {
            if !clients.iter().any(|cl| &cl.client_id == id) {
                return Err(c.err(
                    format!("callers[{i}].clients[{k}]"),
                    format!("{id:?}"),
                    "no [[clients]] entry with this client_id in this policy",
                ));
            }
        }
        let max_concurrent = match rc.max_concurrent {
            None => DEFAULT_MAX_CONCURRENT,
            Some(n) => c.within(&format!("callers[{i}].max_concurrent"), n, 1..=10_000)?,
        };
        let max_per_second = match rc.max_per_second {
            None => None,
            Some(n) => Some(c.within(&format!("callers[{i}].max_per_second"), n, 1..=1_000_000)?),
        };
        let max_queued = match rc.max_queued {
            None => DEFAULT_MAX_QUEUED,
            Some(n) => c.within(&format!("callers[{i}].max_queued"), n, 0..=10_000)?,
        };
        let queue_timeout = match rc.queue_timeout.as_deref() {
            None => Span::from_secs(DEFAULT_QUEUE_TIMEOUT_S),
            Some(text) => {
                let field = format!("callers[{i}].queue_timeout");
                let span = c.span(&field, text)?;
                if span.as_secs() > 300 {
                    return Err(c.err(field, format!("{text:?}"), "must be at most 5m"));
                }
                span
            }
        };
        callers.push(CallerPolicy {
            matcher,
            clients: rc.clients,
            admin: rc.admin,
            max_concurrent,
            max_per_second,
            max_queued,
            queue_timeout,
        });
    }
    Ok(callers)
}

/// All policies of a daemon, keyed by set name. Set names and client_ids
/// are unique across the whole collection.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    sets: BTreeMap<SetName, Arc<Policy>>,
    /// client_id -> the set that defines it.
    clients: HashMap<String, SetName>,
    /// Files (and the directory) others may write, when loaded with
    /// [`WritableFiles::Warn`]; reported among the warnings.
    writable: Vec<WritableError>,
}

/// What a load does with a policy file or directory that group or others
/// may write (a policy grants signing rights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritableFiles {
    /// Refuse it: `serve` and every reload.
    Refuse,
    /// Load it and warn: `policy check`, which may run on a checkout
    /// (a umask 002 one makes every file group-writable) rather than on
    /// the deployed files.
    Warn,
}

impl Policies {
    /// Loads every `*.toml` file of `dir` (not hidden, not recursive,
    /// symlinks followed), in file name order. A directory without policy
    /// files is an error: a daemon with no key set serves nothing. The
    /// directory and every file are refused if group or others may write
    /// them.
    pub fn load_dir(dir: &Path) -> Result<Policies, PolicyError> {
        Policies::load_dir_as(dir, WritableFiles::Refuse)
    }

    /// [`Policies::load_dir`] with the given treatment of files (and the
    /// directory) that group or others may write.
    pub fn load_dir_as(dir: &Path, writable: WritableFiles) -> Result<Policies, PolicyError> {
        let mut others_may_write = Vec::new();
        if let Some(e) = check::dir_writable(dir, "policy") {
            match writable {
                WritableFiles::Refuse => return Err(e.into()),
                WritableFiles::Warn => others_may_write.push(e),
            }
        }
        let read_err = |source| PolicyError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let is_policy = path.extension().is_some_and(|e| e == "toml")
                && path
                    .file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
                && path.is_file();
            if is_policy {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(PolicyError::EmptyDir {
                dir: dir.to_owned(),
            });
        }
        files.sort();
        let mut policies = Policies::load_files_as(&files, writable)?;
        others_may_write.append(&mut policies.writable);
        policies.writable = others_may_write;
        Ok(policies)
    }

    /// Loads the given files (in the given order; on a cross-file duplicate
    /// the earlier file wins and the later one is reported). Reports every
    /// failing file: one error, or [`PolicyError::Many`] with one per file.
    /// A file that group or others may write is refused.
    pub fn load_files(files: &[PathBuf]) -> Result<Policies, PolicyError> {
        Policies::load_files_as(files, WritableFiles::Refuse)
    }

    /// [`Policies::load_files`] with the given treatment of files that
    /// group or others may write.
    pub fn load_files_as(
        files: &[PathBuf],
        writable: WritableFiles,
    ) -> Result<Policies, PolicyError> {
        if files.is_empty() {
            return Err(PolicyError::NoFiles);
        }
        let mut policies = Policies::default();
        let mut errors = Vec::new();
        for file in files {
            let loaded = check::read_guarded(file, "policy")
                .map_err(PolicyError::from)
                .and_then(|(text, others_may_write)| {
                    match (others_may_write, writable) {
                        (Some(e), WritableFiles::Refuse) => return Err(e.into()),
                        (Some(e), WritableFiles::Warn) => policies.writable.push(e),
                        (None, _) => {}
                    }
                    Policy::from_toml(file, &text)
                });
            match loaded.and_then(|p| policies.insert(p)) {
                Ok(()) => {}
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(policies),
            1 => Err(errors.remove(0)),
            _ => Err(PolicyError::Many(errors)),
        }
    }

    /// A collection of already validated policies (e.g. one policy for
    /// `jwksd simulate`), with the same cross-file checks as `load_files`.
    pub fn from_policies(list: Vec<Policy>) -> Result<Policies, PolicyError> {
        let mut policies = Policies::default();
        for p in list {
            policies.insert(p)?;
        }
        Ok(policies)
    }

    /// Adds a policy after the cross-file uniqueness checks.
    fn insert(&mut self, policy: Policy) -> Result<(), PolicyError> {
        self.check_unique(&policy)?;
        for client in &policy.clients {
            self.clients
                .insert(client.client_id.clone(), policy.name.clone());
        }
        self.sets.insert(policy.name.clone(), Arc::new(policy));
        Ok(())
    }

    /// Set names and client_ids are unique across files; the file loaded
    /// first keeps its own and the later one is refused, naming both.
    fn check_unique(&self, policy: &Policy) -> Result<(), FieldError> {
        let c = Checker::new(&policy.file);
        if let Some(other) = self.sets.get(&policy.name) {
            return Err(c.err(
                "name",
                format!("{:?}", policy.name.as_str()),
                format!(
                    "already used by {}; set names are unique across policy files",
                    other.file.display()
                ),
            ));
        }
        for (index, client) in policy.clients.iter().enumerate() {
            if let Some(other) = self
                .clients
                .get(&client.client_id)
                .and_then(|set| self.sets.get(set))
            {
                return Err(c.err(
                    format!("clients[{index}].client_id"),
                    format!("{:?}", client.client_id),
                    format!(
                        "already defined in {}; client_ids are unique across policy files",
                        other.file.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The policy of a set.
    pub fn get(&self, set: &SetName) -> Option<&Arc<Policy>> {
        self.sets.get(set)
    }

    /// Every policy, in set name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.sets.values()
    }

    /// Refuses a policy whose `backend` is neither `software` nor one of
    /// `configured` (the `[backends.NAME]` tables of `jwksd.toml`), naming
    /// the policy file: a policy file alone cannot know the config, so the
    /// daemon checks this when it loads or reloads the policies.
    pub fn check_backends(&self, configured: &[&str]) -> Result<(), PolicyError> {
        let mut errors: Vec<PolicyError> = self
            .iter()
            .filter(|p| p.backend != SOFTWARE_BACKEND && !configured.contains(&p.backend.as_str()))
            .map(|p| {
                let known = if configured.is_empty() {
                    "jwksd.toml has no [backends.NAME] table".to_owned()
                } else {
                    format!("jwksd.toml defines {}", configured.join(", "))
                };
                PolicyError::Invalid(Checker::new(&p.file).err(
                    "backend",
                    format!("{:?}", p.backend),
                    format!(
                        "no such backend: must be \"software\" or a [backends.NAME] table ({known})"
                    ),
                ))
            })
            .collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(PolicyError::Many(errors)),
        }
    }

    /// Every policy's [`Policy::warnings`], in set name order.
    pub fn warnings(&self) -> Vec<String> {
        self.writable
            .iter()
            .map(|e| format!("{e}; jwksd serve and reload refuse it as it is"))
            .chain(self.iter().flat_map(|p| p.warnings()))
            .collect()
    }

    /// The policy defining `client_id` and that client's entry.
    pub fn find_client(&self, client_id: &str) -> Option<(&Arc<Policy>, &ClientPolicy)> {
        let policy = self.sets.get(self.clients.get(client_id)?)?;
        Some((policy, policy.client(client_id)?))
    }

    /// Number of sets.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there is no set (never true for a loaded collection).
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    const F: &str = "policies/x.toml";

    /// Validates `text` as the file `policies/x.toml`.
    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::from_toml(Path::new(F), text)
    }

    /// A minimal valid policy plus `extra` (top-level keys first, then tables).
    fn with(extra: &str) -> Result<Policy, PolicyError> {
        parse(&format!("name = \"x\"\nrotate_every = \"30d\"\n{extra}"))
    }

    fn message(r: Result<Policy, PolicyError>) -> String {
        match r {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cron(expr: &str, tz: &str) -> Schedule {
        parse(&format!(
            "name = \"x\"\nrotate = \"{expr}\"\ntimezone = \"{tz}\"\n"
        ))
        .unwrap()
        .schedule
    }

    const CLIENT: &str =
        "[[clients]]\nclient_id = \"app\"\naudiences = [\"https://ehr.example.com/token\"]\n";

    // ---- happy paths ----

    #[test]
    fn defaults_are_applied_when_fields_are_omitted() {
        let p = with("").unwrap();
        assert_eq!(p.file, Path::new(F));
        assert_eq!(p.name.as_str(), "x");
        assert_eq!(p.algorithms, vec![Alg::Rs384, Alg::Es384]);
        assert_eq!(p.rsa_bits, 4096);
        assert!(matches!(p.schedule, Schedule::Every(s) if s.as_secs() == 30 * 86_400));
        assert_eq!(p.publish_ahead.as_secs(), 2 * 86_400);
        assert_eq!(p.grace.as_secs(), 7 * 86_400);
        assert_eq!(p.jwks_max_age.as_secs(), 3600);
        assert_eq!(p.assertion_lifetime.as_secs(), 240);
        assert_eq!(p.clock_skew.as_secs(), 60);
        assert!(p.clients.is_empty() && p.callers.is_empty());
    }

    #[test]
    fn cron_with_five_fields_defaults_to_utc() {
        let s = parse("name = \"x\"\nrotate = \"0 3 1 * *\"\n")
            .unwrap()
            .schedule;
        assert!(
            matches!(&s, Schedule::Cron { tz, expr, .. } if *tz == Tz::UTC && expr == "0 3 1 * *")
        );
        let next = s.next_activation(utc("2026-01-01T00:00:00Z"), utc("2026-01-05T12:00:00Z"));
        assert_eq!(next, utc("2026-02-01T03:00:00Z"));
    }

    #[test]
    fn cron_with_six_fields_has_seconds_first() {
        let s = cron("30 0 3 1 * *", "UTC");
        let next = s.next_activation(utc("2026-01-01T00:00:00Z"), utc("2026-01-05T12:00:00Z"));
        assert_eq!(next, utc("2026-02-01T03:00:30Z"));
    }

    #[test]
    fn clients_and_callers_are_loaded() {
        let p = with(&format!(
            "{CLIENT}jku = true\n[[clients]]\nclient_id = \"other\"\naudiences = [\"http://localhost:8080/token\", \"http://[::1]/t\"]\n\
             [[callers]]\nuid = 1001\nclients = [\"app\"]\n\
             [[callers]]\ngid = 20\nadmin = true\n\
             [[callers]]\nuser = \"root\"\nclients = [\"app\", \"other\"]\n\
             [[callers]]\ngroup = \"root\"\n"
        ))
        .unwrap();
        assert_eq!(p.clients.len(), 2);
        assert!(p.clients[0].jku && !p.clients[1].jku);
        assert_eq!(p.client("other").unwrap().audiences.len(), 2);
        assert!(p.client("nope").is_none());
        assert_eq!(p.callers[0].matcher, CallerMatch::Uid(1001));
        assert!(!p.callers[0].admin);
        assert_eq!(p.callers[1].matcher, CallerMatch::Gid(20));
        assert!(p.callers[1].admin);
        assert_eq!(p.callers[2].matcher, CallerMatch::Uid(0));
        assert_eq!(p.callers[3].matcher, CallerMatch::Gid(0));
    }

    #[test]
    fn example_policy_in_the_repository_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.toml");
        let p = Policy::load_file(&path).unwrap();
        assert_eq!(p.name.as_str(), "default");
        assert_eq!(p.algorithms, vec![Alg::Rs384, Alg::Es384]);
        assert_eq!(p.rsa_bits, 4096);
        assert!(matches!(&p.schedule, Schedule::Cron { expr, .. } if expr == "0 0 3 1 * *"));
        let c = p.client("my-backend-app").unwrap();
        assert!(c.jku);
        assert_eq!(
            c.audiences,
            vec!["https://fhir.example-ehr.com/oauth2/token"]
        );
        assert_eq!(p.callers.len(), 1);
        assert_eq!(p.callers[0].matcher, CallerMatch::Uid(1001));
        assert!(!p.callers[0].admin);
    }

    // ---- one test per rule ----

    #[test]
    fn toml_syntax_error_names_the_file_and_line() {
        let m = message(parse("name = \"x\"\nrotate_every = \n"));
        assert!(m.starts_with("policies/x.toml: line 2, column "), "{m}");
    }

    #[test]
    fn unknown_field_is_refused_with_file_and_line() {
        let m = message(with("rotat = \"x\"\n"));
        assert!(
            m.starts_with("policies/x.toml: line 3, column 1: unknown field `rotat`"),
            "{m}"
        );
        let m = message(with(&format!("{CLIENT}jwku = true\n")));
        assert!(
            m.starts_with("policies/x.toml: line 6, column 1: unknown field `jwku`"),
            "{m}"
        );
    }

    #[test]
    fn missing_name_is_refused() {
        assert_eq!(
            message(parse("rotate_every = \"30d\"\n")),
            "policies/x.toml: name = (unset): required: the key set name, e.g. \"default\""
        );
    }

    #[test]
    fn name_that_cannot_be_a_kid_part_is_refused() {
        assert_eq!(
            message(parse("name = \"My-Set\"\nrotate_every = \"30d\"\n")),
            "policies/x.toml: name = \"My-Set\": must be 1 to 63 characters of a-z, 0-9 and '_', starting with a letter or digit"
        );
    }

    #[test]
    fn empty_algorithms_are_refused() {
        assert_eq!(
            message(with("algorithms = []\n")),
            "policies/x.toml: algorithms = []: must list at least one of \"RS384\", \"ES384\""
        );
    }

    #[test]
    fn unsupported_algorithm_is_refused_with_its_index() {
        assert_eq!(
            message(with("algorithms = [\"ES384\", \"RS256\"]\n")),
            "policies/x.toml: algorithms[1] = \"RS256\": must be \"RS384\" or \"ES384\""
        );
    }

    #[test]
    fn duplicate_algorithm_is_refused() {
        assert_eq!(
            message(with("algorithms = [\"ES384\", \"ES384\"]\n")),
            "policies/x.toml: algorithms[1] = \"ES384\": listed twice"
        );
    }

    #[test]
    fn single_algorithm_keeps_its_order() {
        assert_eq!(
            with("algorithms = [\"ES384\"]\n").unwrap().algorithms,
            vec![Alg::Es384]
        );
    }

    #[test]
    fn a_policy_naming_a_backend_the_config_does_not_define_is_refused_naming_its_file() {
        let on_hsm = Policies::from_policies(vec![with("backend = \"hsm\"\n").unwrap()]).unwrap();
        assert!(on_hsm.check_backends(&["hsm"]).is_ok());
        assert_eq!(
            on_hsm.check_backends(&[]).unwrap_err().to_string(),
            "policies/x.toml: backend = \"hsm\": no such backend: must be \"software\" or a [backends.NAME] table (jwksd.toml has no [backends.NAME] table)"
        );
        assert_eq!(
            on_hsm
                .check_backends(&["luna", "yubi"])
                .unwrap_err()
                .to_string(),
            "policies/x.toml: backend = \"hsm\": no such backend: must be \"software\" or a [backends.NAME] table (jwksd.toml defines luna, yubi)"
        );
        let software = Policies::from_policies(vec![with("").unwrap()]).unwrap();
        assert!(software.check_backends(&[]).is_ok());
    }

    #[test]
    fn backend_defaults_to_software_and_must_be_a_name() {
        assert_eq!(with("").unwrap().backend, "software");
        assert_eq!(with("backend = \"hsm_1\"\n").unwrap().backend, "hsm_1");
        assert_eq!(
            message(with("backend = \"HSM/1\"\n")),
            "policies/x.toml: backend = \"HSM/1\": must be \"software\" or the name of a [backends.NAME] table of jwksd.toml (1 to 63 characters of a-z, 0-9 and '_')"
        );
    }

    #[test]
    fn rsa_bits_below_2048_is_refused_with_file_and_rule() {
        assert_eq!(
            message(with("rsa_bits = 1024\n")),
            "policies/x.toml: rsa_bits = 1024: must be >= 2048"
        );
    }

    #[test]
    fn rsa_bits_not_generated_by_aws_lc_rs_is_refused() {
        assert_eq!(
            message(with("rsa_bits = 2049\n")),
            "policies/x.toml: rsa_bits = 2049: must be one of 2048, 3072, 4096, 8192 (the sizes aws-lc-rs generates)"
        );
        for ok in [2048, 3072, 4096, 8192] {
            assert_eq!(with(&format!("rsa_bits = {ok}\n")).unwrap().rsa_bits, ok);
        }
    }

    #[test]
    fn rotate_and_rotate_every_together_are_refused() {
        assert_eq!(
            message(with("rotate = \"0 3 * * *\"\n")),
            "policies/x.toml: rotate = \"0 3 * * *\": rotate and rotate_every = \"30d\" are exclusive; keep one"
        );
    }

    #[test]
    fn neither_rotate_nor_rotate_every_is_refused() {
        assert_eq!(
            message(parse("name = \"x\"\n")),
            "policies/x.toml: rotate = (unset): one of rotate (cron, e.g. \"0 0 3 1 * *\") or rotate_every (e.g. \"30d\") is required"
        );
    }

    #[test]
    fn cron_with_wrong_field_count_is_refused() {
        assert_eq!(
            message(parse("name = \"x\"\nrotate = \"0 3 * *\"\n")),
            "policies/x.toml: rotate = \"0 3 * *\": must have 5 fields (minute hour day month weekday) or 6 (second first); found 4"
        );
        assert!(
            message(parse("name = \"x\"\nrotate = \"0 0 3 1 * * 2030\"\n")).contains("found 7")
        );
        assert!(message(parse("name = \"x\"\nrotate = \"@daily\"\n")).contains("found 1"));
    }

    #[test]
    fn cron_that_does_not_parse_is_refused() {
        let m = message(parse("name = \"x\"\nrotate = \"0 25 * * *\"\n"));
        assert!(
            m.starts_with("policies/x.toml: rotate = \"0 25 * * *\": not a cron expression: "),
            "{m}"
        );
    }

    #[test]
    fn cron_that_never_matches_is_refused() {
        assert_eq!(
            message(parse("name = \"x\"\nrotate = \"0 0 30 2 *\"\n")),
            "policies/x.toml: rotate = \"0 0 30 2 *\": never matches a real date and time"
        );
    }

    #[test]
    fn unknown_timezone_is_refused() {
        assert_eq!(
            message(parse(
                "name = \"x\"\nrotate = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n"
            )),
            "policies/x.toml: timezone = \"Mars/Olympus\": not an IANA time zone name like \"UTC\" or \"America/New_York\""
        );
    }

    #[test]
    fn timezone_with_rotate_every_is_refused_as_meaningless() {
        assert_eq!(
            message(with("timezone = \"Europe/Berlin\"\n")),
            "policies/x.toml: timezone = \"Europe/Berlin\": only applies to rotate; rotate_every counts from the current key's activation"
        );
    }

    #[test]
    fn unparsable_duration_is_refused_with_its_field() {
        assert_eq!(
            message(with("grace = \"7 days\"\n")),
            "policies/x.toml: grace = \"7 days\": not a duration like \"90s\", \"5m\", \"1h30m\", \"7d\" or \"2w\" (units s, m, h, d, w; not zero)"
        );
        assert!(
            message(parse("name = \"x\"\nrotate_every = \"0d\"\n"))
                .starts_with("policies/x.toml: rotate_every = \"0d\": not a duration")
        );
    }

    #[test]
    fn assertion_lifetime_over_5m_is_refused() {
        assert_eq!(
            message(with("assertion_lifetime = \"301s\"\n")),
            "policies/x.toml: assertion_lifetime = 5m1s: must be <= 5m"
        );
        assert!(with("assertion_lifetime = \"5m\"\n").is_ok());
    }

    #[test]
    fn publish_ahead_below_jwks_max_age_is_refused_naming_publish_ahead() {
        assert_eq!(
            message(with("publish_ahead = \"59m\"\njwks_max_age = \"1h\"\n")),
            "policies/x.toml: publish_ahead = 59m: must be >= jwks_max_age (1h), so that a verifier's cached JWKS already holds a key when it starts signing"
        );
        assert!(with("publish_ahead = \"1h\"\njwks_max_age = \"1h\"\n").is_ok());
    }

    #[test]
    fn a_short_max_age_or_publish_ahead_is_accepted_with_a_warning_naming_field_and_why() {
        let short =
            with("jwks_max_age = \"59s\"\npublish_ahead = \"4m59s\"\ngrace = \"1d\"\n").unwrap();
        let warnings = short.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("policies/x.toml: jwks_max_age = 59s: under 1m; "),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("at least 60 s"), "{}", warnings[0]);
        assert!(
            warnings[1].starts_with("policies/x.toml: publish_ahead = 4m59s: under 5m; "),
            "{}",
            warnings[1]
        );
        let at_the_bounds =
            with("jwks_max_age = \"1m\"\npublish_ahead = \"5m\"\ngrace = \"1d\"\n").unwrap();
        assert_eq!(at_the_bounds.warnings(), Vec::<String>::new());
        assert_eq!(
            with("").unwrap().warnings(),
            Vec::<String>::new(),
            "the defaults"
        );
    }

    #[test]
    fn grace_below_lifetime_plus_max_age_plus_skew_is_refused_showing_the_sum() {
        assert_eq!(
            message(with("grace = \"1h\"\n")),
            "policies/x.toml: grace = 1h: must be >= assertion_lifetime + jwks_max_age + clock_skew (4m + 1h + 1m = 1h5m)"
        );
        assert!(with("grace = \"1h5m\"\n").is_ok());
        assert!(message(with("grace = \"1h4m59s\"\n")).contains("grace = 1h4m59s"));
    }

    #[test]
    fn empty_client_id_is_refused() {
        assert_eq!(
            message(with(
                "[[clients]]\nclient_id = \"\"\naudiences = [\"https://a/t\"]\n"
            )),
            "policies/x.toml: clients[0].client_id = \"\": must not be empty"
        );
    }

    #[test]
    fn client_id_with_space_or_control_is_refused() {
        assert_eq!(
            message(with(&format!(
                "{CLIENT}[[clients]]\nclient_id = \"my app\"\naudiences = [\"https://a/t\"]\n"
            ))),
            "policies/x.toml: clients[1].client_id = \"my app\": must be printable ASCII without spaces"
        );
        assert!(
            message(with(
                "[[clients]]\nclient_id = \"a\\u00e9\"\naudiences = [\"https://a/t\"]\n"
            ))
            .contains("printable ASCII")
        );
    }

    #[test]
    fn duplicate_client_id_in_one_file_is_refused() {
        assert_eq!(
            message(with(&format!("{CLIENT}{CLIENT}"))),
            "policies/x.toml: clients[1].client_id = \"app\": already defined at clients[0]; client_ids are unique"
        );
    }

    #[test]
    fn client_without_audiences_is_refused() {
        assert_eq!(
            message(with("[[clients]]\nclient_id = \"a\"\naudiences = []\n")),
            "policies/x.toml: clients[0].audiences = []: must list at least one exact token endpoint URL"
        );
    }

    #[test]
    fn plain_http_audience_is_refused_unless_local() {
        assert_eq!(
            message(with(&format!(
                "{CLIENT}[[clients]]\nclient_id = \"b\"\naudiences = [\"http://127.0.0.1/t\", \"http://ehr.example.com/token\"]\n"
            ))),
            "policies/x.toml: clients[1].audiences[1] = \"http://ehr.example.com/token\": must be https unless the host is localhost, 127.0.0.0/8 or ::1"
        );
    }

    #[test]
    fn audience_with_fragment_is_refused() {
        assert_eq!(
            message(with(
                "[[clients]]\nclient_id = \"a\"\naudiences = [\"https://ehr.example.com/token#x\"]\n"
            )),
            "policies/x.toml: clients[0].audiences[0] = \"https://ehr.example.com/token#x\": must not contain a fragment ('#...')"
        );
    }

    #[test]
    fn relative_audience_is_refused() {
        assert_eq!(
            message(with(
                "[[clients]]\nclient_id = \"a\"\naudiences = [\"/oauth2/token\"]\n"
            )),
            "policies/x.toml: clients[0].audiences[0] = \"/oauth2/token\": must be an absolute http(s) URL with a host, like \"https://ehr.example.com/token\""
        );
    }

    #[test]
    fn scopes_and_token_rate_have_defaults_and_are_loaded() {
        let p = with(CLIENT).unwrap();
        assert!(p.clients[0].scopes.is_empty());
        assert_eq!(p.clients[0].token_requests_per_minute, 50);
        let p = with(&format!(
            "{CLIENT}scopes = [\"system/Patient.rs\", \"system/Observation.rs\"]\ntoken_requests_per_minute = 5\n"
        ))
        .unwrap();
        assert_eq!(
            p.clients[0].scopes,
            ["system/Patient.rs", "system/Observation.rs"]
        );
        assert_eq!(p.clients[0].token_requests_per_minute, 5);
    }

    #[test]
    fn a_scope_that_is_not_one_scope_token_is_refused() {
        for (bad, shown) in [
            ("\"a b\"", "\"a b\""),
            ("\"\"", "\"\""),
            ("\"a\\\"b\"", "\"a\\\"b\""),
            ("\"\\u00e9\"", "\"é\""),
        ] {
            assert_eq!(
                message(with(&format!("{CLIENT}scopes = [\"ok\", {bad}]\n"))),
                format!(
                    "policies/x.toml: clients[0].scopes[1] = {shown}: must be one scope token: printable ASCII without spaces, '\"' or '\\' (list several scopes as several strings)"
                )
            );
        }
    }

    #[test]
    fn a_duplicate_scope_is_refused() {
        assert_eq!(
            message(with(&format!("{CLIENT}scopes = [\"a\", \"b\", \"a\"]\n"))),
            "policies/x.toml: clients[0].scopes[2] = \"a\": already listed at clients[0].scopes[0]"
        );
    }

    #[test]
    fn token_requests_per_minute_out_of_range_is_refused() {
        for bad in [0, -1, 10_001] {
            assert_eq!(
                message(with(&format!(
                    "{CLIENT}token_requests_per_minute = {bad}\n"
                ))),
                format!(
                    "policies/x.toml: clients[0].token_requests_per_minute = {bad}: must be between 1 and 10000"
                )
            );
        }
    }

    #[test]
    fn caller_with_two_matchers_is_refused() {
        assert_eq!(
            message(with("[[callers]]\nuid = 1\nuser = \"root\"\n")),
            "policies/x.toml: callers[0] = {uid, user}: must set exactly one of uid, gid, user, group"
        );
    }

    #[test]
    fn caller_with_no_matcher_is_refused() {
        assert_eq!(
            message(with("[[callers]]\nadmin = true\n")),
            "policies/x.toml: callers[0] = {}: must set exactly one of uid, gid, user, group"
        );
    }

    #[test]
    fn caller_uid_out_of_range_is_refused() {
        assert_eq!(
            message(with("[[callers]]\nuid = -1\n")),
            "policies/x.toml: callers[0].uid = -1: must be between 0 and 4294967294"
        );
        assert!(
            message(with("[[callers]]\ngid = 4294967295\n"))
                .contains("callers[0].gid = 4294967295")
        );
    }

    #[test]
    fn unknown_user_is_refused_naming_the_field() {
        assert_eq!(
            message(with("[[callers]]\nuser = \"jwksd-no-such-user-x\"\n")),
            "policies/x.toml: callers[0].user = \"jwksd-no-such-user-x\": no such user on this host"
        );
    }

    #[test]
    fn unknown_group_is_refused_naming_the_field() {
        assert_eq!(
            message(with(
                "[[callers]]\nuid = 5\n[[callers]]\ngroup = \"jwksd-no-such-group-x\"\n"
            )),
            "policies/x.toml: callers[1].group = \"jwksd-no-such-group-x\": no such group on this host"
        );
    }

    #[test]
    fn caller_naming_a_client_not_in_this_policy_is_refused() {
        assert_eq!(
            message(with(&format!(
                "{CLIENT}[[callers]]\nuid = 1001\nclients = [\"app\", \"ghost\"]\n"
            ))),
            "policies/x.toml: callers[0].clients[1] = \"ghost\": no [[clients]] entry with this client_id in this policy"
        );
    }

    #[test]
    fn a_callers_queue_has_defaults_and_bounds_naming_the_field() {
        let p = with("[[callers]]\nuid = 5\n").unwrap();
        let caller = &p.callers[0];
        assert_eq!(
            (
                caller.max_concurrent,
                caller.max_queued,
                caller.queue_timeout.as_secs()
            ),
            (16, 64, 5)
        );
        let p = with("[[callers]]\nuid = 5\nmax_queued = 0\nqueue_timeout = \"30s\"\n").unwrap();
        assert_eq!(p.callers[0].max_queued, 0);
        assert_eq!(p.callers[0].queue_timeout.as_secs(), 30);
        assert_eq!(
            message(with("[[callers]]\nuid = 5\nmax_queued = -1\n")),
            "policies/x.toml: callers[0].max_queued = -1: must be between 0 and 10000"
        );
        assert_eq!(
            message(with("[[callers]]\nuid = 5\nqueue_timeout = \"10m\"\n")),
            "policies/x.toml: callers[0].queue_timeout = \"10m\": must be at most 5m"
        );
        assert!(
            message(with("[[callers]]\nuid = 5\nqueue_timeout = \"soon\"\n")).starts_with(
                "policies/x.toml: callers[0].queue_timeout = \"soon\": not a duration"
            )
        );
    }

    // ---- several files ----

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn policy_text(name: &str, client: &str) -> String {
        format!(
            "name = \"{name}\"\nrotate_every = \"30d\"\n[[clients]]\nclient_id = \"{client}\"\naudiences = [\"https://ehr.example.com/token\"]\n"
        )
    }

    #[test]
    fn load_dir_reads_every_toml_file_and_indexes_clients() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.toml", &policy_text("b", "app_b"));
        write(dir.path(), "a.toml", &policy_text("a", "app_a"));
        write(dir.path(), "notes.txt", "not a policy");
        write(dir.path(), ".hidden.toml", "garbage");
        let all = Policies::load_dir(dir.path()).unwrap();
        let names: Vec<_> = all.iter().map(|p| p.name.as_str().to_owned()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(all.len(), 2);
        let (p, c) = all.find_client("app_b").unwrap();
        assert_eq!((p.name.as_str(), c.client_id.as_str()), ("b", "app_b"));
        assert!(all.find_client("nope").is_none());
        assert!(all.get(&SetName::new("a").unwrap()).is_some());
    }

    #[test]
    fn empty_policy_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Policies::load_dir(dir.path()).unwrap_err().to_string();
        assert_eq!(
            m,
            format!(
                "{}: no policy files (*.toml) in this directory; a daemon needs at least one",
                dir.path().display()
            )
        );
    }

    #[test]
    fn duplicate_set_name_across_files_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", &policy_text("same", "one"));
        let b = write(dir.path(), "b.toml", &policy_text("same", "two"));
        let m = Policies::load_files(&[a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            m,
            format!(
                "{}: name = \"same\": already used by {}; set names are unique across policy files",
                b.display(),
                a.display()
            )
        );
    }

    #[test]
    fn duplicate_client_id_across_files_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", &policy_text("a", "shared"));
        let b = write(dir.path(), "b.toml", &policy_text("b", "shared"));
        let m = Policies::load_files(&[a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            m,
            format!(
                "{}: clients[0].client_id = \"shared\": already defined in {}; client_ids are unique across policy files",
                b.display(),
                a.display()
            )
        );
    }

    #[test]
    fn load_files_reports_every_failing_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good.toml", &policy_text("good", "g"));
        let bad1 = write(
            dir.path(),
            "bad1.toml",
            "name = \"bad1\"\nrotate_every = \"30d\"\nrsa_bits = 1024\n",
        );
        let bad2 = write(dir.path(), "bad2.toml", "name = \"bad2\"\n");
        let missing = dir.path().join("missing.toml");
        let err =
            Policies::load_files(&[bad1.clone(), good, bad2.clone(), missing.clone()]).unwrap_err();
        assert_eq!(err.problems().len(), 3);
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            format!("{}: rsa_bits = 1024: must be >= 2048", bad1.display())
        );
        assert!(lines[1].starts_with(&format!("{}: rotate = (unset)", bad2.display())));
        assert!(lines[2].starts_with(&format!("{}: cannot read policy file: ", missing.display())));
    }

    #[test]
    fn load_files_with_no_file_is_refused() {
        assert_eq!(
            Policies::load_files(&[]).unwrap_err().to_string(),
            "no policy files given"
        );
    }
}
