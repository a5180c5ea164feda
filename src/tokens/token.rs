//! The access token as a secret, and the scope set it was asked for.
//!
//! Owns: keeping an access token out of `Debug`, logs and errors, and
//! zeroizing it on drop; the canonical (sorted, deduplicated) form of a
//! scope request, which is the cache's notion of "the same scopes".

use std::collections::BTreeSet;
use std::fmt;

use zeroize::Zeroizing;

/// An access token. There is no `Display`, `Serialize` or `PartialEq`: it
/// leaves this type only through [`AccessToken::expose`], so every place
/// that hands one out is easy to find. `Debug` prints its length only.
pub struct AccessToken(Zeroizing<String>);

impl AccessToken {
    /// Takes ownership of `token` without copying it.
    pub fn new(token: String) -> Self {
        AccessToken(Zeroizing::new(token))
    }

    /// The token itself: only for the answer to the caller who asked.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken({} bytes, redacted)", self.0.len())
    }
}

/// A set of scope tokens, sorted: `"b a a"` and `"a b"` are one set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    /// Splits a space-separated `scope` parameter (RFC 6749 §3.3). Empty
    /// parts from repeated spaces are ignored.
    pub fn parse(text: &str) -> Self {
        ScopeSet(
            text.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Whether every scope of `self` is in `allowed`.
    pub fn is_subset_of(&self, allowed: &ScopeSet) -> bool {
        self.0.is_subset(&allowed.0)
    }

    /// The scopes of `self` not in `allowed`, in order.
    pub fn outside<'a>(&'a self, allowed: &'a ScopeSet) -> impl Iterator<Item = &'a str> {
        self.0.difference(&allowed.0).map(String::as_str)
    }

    /// Whether there is no scope.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl<S: Into<String>> FromIterator<S> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().map(Into::into).collect())
    }
}

impl fmt::Display for ScopeSet {
    /// The space-separated form, sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let t = AccessToken::new("eyJsecret-token".into());
        assert_eq!(format!("{t:?}"), "AccessToken(15 bytes, redacted)");
        assert_eq!(t.expose(), "eyJsecret-token");
    }

    #[test]
    fn scope_sets_are_sorted_and_deduplicated() {
        let a = ScopeSet::parse("b a  a");
        assert_eq!(a, ScopeSet::parse("a b"));
        assert_eq!(a.to_string(), "a b");
        let allowed: ScopeSet = ["a", "b", "c"].into_iter().collect();
        assert!(a.is_subset_of(&allowed));
        let wide = ScopeSet::parse("a d");
        assert!(!wide.is_subset_of(&allowed));
        assert_eq!(wide.outside(&allowed).collect::<Vec<_>>(), ["d"]);
        assert!(ScopeSet::parse("  ").is_empty());
    }
}
