//! Where a key set's JWKS is served, in one place: the routes the public
//! listener answers and the URLs a `jku` header and the start-up banner
//! name must be the same paths.

use crate::types::SetName;

/// The route of the set named `default`.
pub const DEFAULT_SET_PATH: &str = "/.well-known/jwks.json";
/// The route of every set, `default` included: `/jwks/<set>.json`.
pub const NAMED_SET_ROUTE: &str = "/jwks/{file}";

/// The path of `set`'s JWKS: `default` at [`DEFAULT_SET_PATH`], every
/// other set at `/jwks/<set>.json`.
pub fn jwks_path(set: &SetName) -> String {
    if set.as_str() == "default" {
        DEFAULT_SET_PATH.to_owned()
    } else {
        format!("/jwks/{set}.json")
    }
}

/// `server.public_url` without its trailing `/`: what EHRs fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// `url` as configured; a trailing `/` is dropped (DESIGN §3).
    pub fn new(url: &str) -> Self {
        PublicUrl(url.trim_end_matches('/').to_owned())
    }

    /// The public URL of `set`'s JWKS (the `jku` header value).
    pub fn jwks_url(&self, set: &SetName) -> String {
        format!("{}{}", self.0, jwks_path(set))
    }

    /// The URL without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_is_at_the_well_known_path_and_others_by_name() {
        let url = PublicUrl::new("https://keys.example.com/");
        let default = SetName::new("default").unwrap();
        let partner = SetName::new("partner").unwrap();
        assert_eq!(
            url.jwks_url(&default),
            "https://keys.example.com/.well-known/jwks.json"
        );
        assert_eq!(
            url.jwks_url(&partner),
            "https://keys.example.com/jwks/partner.json"
        );
        assert_eq!(url.as_str(), "https://keys.example.com");
    }
}
