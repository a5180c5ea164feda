//! The token broker of DESIGN §6: jwksd signs a client assertion, posts it
//! to the EHR's token endpoint (`client_credentials`) and caches the access
//! token it gets back, so that an app's whole integration is one request
//! to the socket.
//!
//! `token.rs` holds the secret (an access token zeroized on drop) and the
//! scope set a token is asked and cached for; `upstream.rs` is the HTTP
//! client of token endpoints (strict answers, size cap, timeouts);
//! `cache.rs` decides when to call it (single flight, refresh ahead,
//! `Retry-After`, the rate cap). The socket wiring lives in
//! `socket/tokens.rs`: nothing here knows who the caller is.

pub mod cache;
pub mod token;
pub mod upstream;
