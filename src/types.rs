//! Validated newtypes shared by every module: set names, kids, algorithms,
//! key states and policy durations. Each is built only through a validating
//! constructor whose error quotes the input, so the rest of the code never
//! re-checks them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value could not become one of the newtypes of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// A set name outside `[a-z0-9][a-z0-9_]{0,62}`.
    #[error(
        "{0:?}: a set name is 1 to 63 characters of a-z, 0-9 and '_', starting with a letter or digit"
    )]
    SetName(String),
    /// An algorithm other than RS384 or ES384.
    #[error("{0:?}: must be \"RS384\" or \"ES384\"")]
    Alg(String),
    /// A key state name that is not one of the five states.
    #[error("{0:?}: not a key state (pending, active, retiring, retired, revoked)")]
    State(String),
    /// A duration that is not `<number><unit>` (s, m, h, d, w) or is zero.
    #[error("{0:?}: not a duration like \"90s\", \"5m\", \"1h\", \"7d\" or \"2w\"")]
    Duration(String),
}

/// Name of a key set: one policy file, served at `/jwks/<name>.json`.
///
/// Lowercase letters, digits and `_` only: the name is the first part of
/// every kid, where `-` separates the parts, and it is a URL path segment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SetName(String);

impl SetName {
    /// Builds a set name, refusing anything that could not live in a kid or a URL.
    pub fn new(name: &str) -> Result<Self, TypeError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && name.as_bytes()[0] != b'_';
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(TypeError::SetName(name.to_owned()))
        }
    }

    /// The name as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `SetName` be searched with a `&str` (the JWKS path
/// looks sets up without allocating). Sound: the derived `Eq`, `Ord` and
/// `Hash` are those of the inner `String`, hence of `str`.
impl std::borrow::Borrow<str> for SetName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SetName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SetName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A JWS signing algorithm jwksd manages keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// ECDSA on P-384 with SHA-384, JOSE signature form (r||s).
    Es384,
}

impl Alg {
    /// Both algorithms, in the order used when a policy does not say.
    pub const ALL: [Alg; 2] = [Alg::Rs384, Alg::Es384];

    /// The JOSE name: `RS384` or `ES384`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs384 => "RS384",
            Alg::Es384 => "ES384",
        }
    }

    /// The lowercase form used inside kids: `rs384` or `es384`.
    pub fn kid_part(self) -> &'static str {
        match self {
            Alg::Rs384 => "rs384",
            Alg::Es384 => "es384",
        }
    }
}

impl FromStr for Alg {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS384" => Ok(Alg::Rs384),
            "ES384" => Ok(Alg::Es384),
            _ => Err(TypeError::Alg(s.to_owned())),
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Alg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Alg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A key id: `<set>-<alg>-v<N>-<first 8 chars of the RFC 7638 thumbprint>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Kid(String);

impl Kid {
    /// Builds the kid of DESIGN.md rule 5 from its parts.
    pub fn build(set: &SetName, alg: Alg, version: u32, thumbprint: &str) -> Self {
        let short: String = thumbprint.chars().take(8).collect();
        Kid(format!("{set}-{}-v{version}-{short}", alg.kid_part()))
    }

    /// Wraps a kid read back from the store or a request; kids are opaque
    /// outside this constructor and `build`.
    pub fn from_stored(kid: impl Into<String>) -> Self {
        Kid(kid.into())
    }

    /// The kid as published.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a key is in its life (DESIGN.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyState {
    /// Published, not yet signing; private half held (sealed).
    Pending,
    /// Published and the one signer of its (set, alg).
    Active,
    /// Published for the grace period; private half destroyed.
    Retiring,
    /// No longer published; only the public half remains for the record.
    Retired,
    /// Removed from the JWKS at once by an operator; private half destroyed.
    Revoked,
}

impl KeyState {
    /// Lowercase name, as stored and as shown by `keys list`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }

    /// Whether keys in this state appear in the JWKS.
    pub fn is_published(self) -> bool {
        matches!(
            self,
            KeyState::Pending | KeyState::Active | KeyState::Retiring
        )
    }

    /// Whether keys in this state still hold their (sealed) private half.
    pub fn holds_private(self) -> bool {
        matches!(self, KeyState::Pending | KeyState::Active)
    }
}

impl FromStr for KeyState {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => KeyState::Pending,
            "active" => KeyState::Active,
            "retiring" => KeyState::Retiring,
            "retired" => KeyState::Retired,
            "revoked" => KeyState::Revoked,
            _ => return Err(TypeError::State(s.to_owned())),
        })
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A policy duration such as `"5m"` or `"30d"`, whole seconds, never zero.
///
/// Written by hand rather than with `humantime`: policies need exactly the
/// units s/m/h/d/w, combined like `1h30m`, and nothing locale- or
/// month-dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(u64);

impl Span {
    /// A span of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Span(secs)
    }

    /// Length in seconds.
    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// Length as a chrono duration, for timestamp arithmetic.
    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::seconds(self.0 as i64)
    }

    /// Parses `90s`, `5m`, `1h30m`, `7d`, `2w`.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        let err = || TypeError::Duration(text.to_owned());
        let mut total: u64 = 0;
        let mut number: Option<u64> = None;
        for c in text.trim().chars() {
            if let Some(d) = c.to_digit(10) {
                let n = number.unwrap_or(0);
                number = Some(
                    n.checked_mul(10)
                        .and_then(|n| n.checked_add(d as u64))
                        .ok_or_else(err)?,
                );
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                _ => return Err(err()),
            };
            let n = number.take().ok_or_else(err)?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
        }
        // A trailing bare number has no unit, and zero is never meaningful
        // for any policy duration.
        if number.is_some() || total == 0 || total > 100 * 365 * 86_400 {
            return Err(err());
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    /// Largest exact units, e.g. `7d`, `1h30m`, `90s` -> `1m30s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
            if rest >= unit {
                write!(f, "{}{}", rest / unit, name)?;
                rest %= unit;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_units_and_combinations() {
        assert_eq!(Span::parse("90s").unwrap().as_secs(), 90);
        assert_eq!(Span::parse("5m").unwrap().as_secs(), 300);
        assert_eq!(Span::parse("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(Span::parse("2d").unwrap().as_secs(), 172_800);
        assert_eq!(Span::parse("1w").unwrap().as_secs(), 604_800);
        assert_eq!(Span::parse("1h30m").unwrap().to_string(), "1h30m");
    }

    #[test]
    fn spans_refuse_missing_units_zero_and_garbage() {
        for bad in [
            "",
            "5",
            "0s",
            "m",
            "5x",
            "-5m",
            "1.5h",
            "99999999999999999999s",
        ] {
            assert!(Span::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn set_names_are_kid_and_url_safe() {
        assert!(SetName::new("default").is_ok());
        assert!(SetName::new("epic_prod2").is_ok());
        for bad in ["", "Default", "a-b", "_x", "a/b", &"x".repeat(64)] {
            assert!(SetName::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn kids_follow_rule_5() {
        let set = SetName::new("default").unwrap();
        let kid = Kid::build(&set, Alg::Rs384, 3, "kq9x2m1aZZZZ");
        assert_eq!(kid.as_str(), "default-rs384-v3-kq9x2m1a");
    }
}
