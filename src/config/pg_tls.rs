//! The "https unless localhost" rule of `url.rs`, applied to the store:
//! whoever can write the store controls the published JWKS, so a
//! PostgreSQL server reached over a network must be authenticated, not
//! merely encrypted.
//!
//! The rule is decided on the connection options exactly as sqlx will use
//! them (its own URL parser, with the `PG*` environment variables filling
//! what the URL leaves out), never on a second parse of our own that could
//! read a host differently from the one sqlx connects to.
//!
//! Owns: that decision. Does not own: connecting (`store/postgres.rs`) or
//! redacting the URL in messages (`daemon.rs`).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::url::is_local_host;

/// Why a PostgreSQL connection is refused. The Display is the rule, meant
/// to follow `<file>: store.url = <redacted url>: ` in a load error; it
/// never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgTlsError {
    /// sqlx cannot parse the URL (its message names the part, not the
    /// password).
    #[error("not a PostgreSQL URL: {0}")]
    Unparsable(String),
    /// A network host without `sslmode=verify-full`.
    #[error(
        "host {host} is not loopback, so the server must be authenticated: add sslmode=verify-full (with sslrootcert=FILE for a private CA); sslmode is {mode}, which {why}. Only localhost, 127.0.0.0/8, ::1 and a Unix socket directory are exempt"
    )]
    Unauthenticated {
        /// The host sqlx would connect to.
        host: String,
        /// The effective sslmode, spelled as in the URL.
        mode: &'static str,
        /// What that mode leaves open.
        why: &'static str,
    },
}

/// Checks `url` as sqlx will connect with it; see [`check_options`].
pub fn check_url(url: &str) -> Result<PgConnectOptions, PgTlsError> {
    // sqlx's parse errors name the offending part (a port, an sslmode
    // value), never the userinfo.
    let options =
        PgConnectOptions::from_str(url).map_err(|e| PgTlsError::Unparsable(e.to_string()))?;
    check_options(&options)?;
    Ok(options)
}

/// A connection to a loopback host or over a Unix socket may use any
/// sslmode; any other needs `verify-full`: the server's certificate checked
/// against the trusted roots and its name against the host.
///
/// `verify-ca` is refused too: sqlx puts `sslrootcert` next to the public
/// web roots and then checks no name, so any publicly trusted certificate
/// for any name would pass for the database (sqlx-core 0.9,
/// `net/tls/tls_rustls.rs`).
pub fn check_options(options: &PgConnectOptions) -> Result<(), PgTlsError> {
    let host = options.get_host();
    // sqlx connects over a Unix socket when one is set or the host is a
    // directory path.
    if options.get_socket().is_some() || host.starts_with('/') || is_local_host(host) {
        return Ok(());
    }
    let (mode, why) = match options.get_ssl_mode() {
        PgSslMode::VerifyFull => return Ok(()),
        PgSslMode::Disable => ("disable", "sends everything in clear"),
        PgSslMode::Allow => ("allow", "sends everything in clear"),
        PgSslMode::Prefer => (
            "prefer (the default)",
            "falls back to clear text and checks no certificate",
        ),
        PgSslMode::Require => ("require", "encrypts but accepts any certificate"),
        PgSslMode::VerifyCa => (
            "verify-ca",
            "checks no host name, and sqlx trusts the public web roots besides sslrootcert, so any publicly trusted certificate would pass",
        ),
    };
    Err(PgTlsError::Unauthenticated {
        host: host.to_owned(),
        mode,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_unix_sockets_need_no_tls() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://u:p@localhost/db?sslmode=disable",
            "postgres://u@[::1]:5432/db",
            "postgres://u@127.2.3.4/db",
            "postgres:///db?host=/var/run/postgresql",
            "postgres://%2Fvar%2Frun%2Fpostgresql/db",
        ] {
            assert!(check_url(url).is_ok(), "{url}: {:?}", check_url(url).err());
        }
    }

    #[test]
    fn a_network_host_needs_verify_full() {
        assert!(check_url("postgres://u:p@db.example.com/db?sslmode=verify-full").is_ok());
        assert!(
            check_url("postgres://u@10.0.0.5/db?sslmode=verify-full&sslrootcert=/etc/ca.pem")
                .is_ok()
        );
        for (url, mode) in [
            ("postgres://u:p@db.example.com/db", "prefer (the default)"),
            ("postgres://u@db.example.com/db?sslmode=require", "require"),
            ("postgres://u@10.0.0.5/db?sslmode=disable", "disable"),
            (
                "postgres://u@db/db?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
                "verify-ca",
            ),
        ] {
            match check_url(url) {
                Err(PgTlsError::Unauthenticated { mode: m, .. }) => assert_eq!(m, mode, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    /// The host sqlx connects to is the one judged: a `host` or `hostaddr`
    /// parameter overrides the URL's host, in either direction.
    #[test]
    fn the_host_sqlx_connects_to_is_the_one_judged() {
        let err = check_url("postgres://u@localhost/db?host=db.example.com").unwrap_err();
        assert!(err.to_string().contains("host db.example.com "), "{err}");
        assert!(check_url("postgres://u@localhost/db?hostaddr=192.0.2.7").is_err());
        assert!(check_url("postgres://u@db.example.com/db?hostaddr=127.0.0.1").is_ok());
        assert!(check_url("postgres://u@db.example.com/db?host=/run/pg").is_ok());
    }

    #[test]
    fn the_rule_names_the_remedy_and_never_the_password() {
        let err = check_url("postgres://u:s3cr3t@db.example.com/db?sslmode=require").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sslmode=verify-full"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        let bad = check_url("postgres://u:s3cr3t@db.example.com/db?sslmode=sometimes").unwrap_err();
        assert!(matches!(bad, PgTlsError::Unparsable(_)), "{bad:?}");
        assert!(!bad.to_string().contains("s3cr3t"), "{bad}");
    }
}
