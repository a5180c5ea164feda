//! The one "https unless localhost" rule shared by `public_url` (config) and
//! every client audience (policy). Owns URL shape checks only; it never
//! resolves names or opens connections.

use std::net::{IpAddr, Ipv6Addr};

use hyper::Uri;

/// Why a text is not an acceptable web URL. The Display is the rule, meant
/// to follow `<file>: <field> = <value>: ` in a load error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not parseable as an absolute URL with a scheme and a host.
    #[error("must be an absolute http(s) URL with a host, like \"https://ehr.example.com/token\"")]
    NotAbsolute,
    /// A scheme other than `http` or `https`.
    #[error("must use https (http only for localhost, 127.0.0.0/8 or ::1)")]
    Scheme,
    /// `http://` to a host that is not a loopback name or address.
    #[error("must be https unless the host is localhost, 127.0.0.0/8 or ::1")]
    NotHttps,
    /// A `#fragment`, which is never sent to a server and cannot be matched.
    #[error("must not contain a fragment ('#...')")]
    Fragment,
}

/// Whether `host` is exempt from the https rule: `localhost` (any case),
/// an IPv4 address in `127.0.0.0/8`, or `::1` (with or without brackets).
pub fn is_local_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => v6 == Ipv6Addr::LOCALHOST,
        Err(_) => false,
    }
}

/// Parses an absolute `http`/`https` URL with a host and no fragment, and
/// applies "https unless the host is local" (see [`is_local_host`]).
pub fn parse_web_url(text: &str) -> Result<Uri, UrlError> {
    if text.contains('#') {
        return Err(UrlError::Fragment);
    }
    let uri: Uri = text.parse().map_err(|_| UrlError::NotAbsolute)?;
    let host = match uri.host() {
        Some(h) if !h.is_empty() => h,
        _ => return Err(UrlError::NotAbsolute),
    };
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_local_host(host) => Ok(uri),
        Some("http") => Err(UrlError::NotHttps),
        Some(_) => Err(UrlError::Scheme),
        None => Err(UrlError::NotAbsolute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses_are_local() {
        for h in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_local_host(h), "{h}");
        }
        for h in [
            "example.com",
            "128.0.0.1",
            "10.0.0.1",
            "::2",
            "[::ffff:127.0.0.1]",
            "localhost.evil.com",
        ] {
            assert!(!is_local_host(h), "{h}");
        }
    }

    #[test]
    fn https_is_required_unless_the_host_is_local() {
        assert!(parse_web_url("https://ehr.example.com/oauth2/token").is_ok());
        assert!(parse_web_url("http://localhost:8080/token").is_ok());
        assert!(parse_web_url("http://127.0.0.1/token").is_ok());
        assert!(parse_web_url("http://[::1]:9000/token").is_ok());
        assert_eq!(
            parse_web_url("http://ehr.example.com/token"),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            parse_web_url("ftp://ehr.example.com/token"),
            Err(UrlError::Scheme)
        );
        assert_eq!(
            parse_web_url("https://x/token#frag"),
            Err(UrlError::Fragment)
        );
        assert_eq!(parse_web_url("/oauth2/token"), Err(UrlError::NotAbsolute));
        assert_eq!(parse_web_url("not a url"), Err(UrlError::NotAbsolute));
        assert_eq!(parse_web_url(""), Err(UrlError::NotAbsolute));
    }
}
