//! The Unix socket API (HTTP/1.1 + JSON). Who is asking comes from the
//! kernel (SO_PEERCRED), never from the request ([`peer`], attached to each
//! connection by [`credentials`]); what they may do comes from the
//! policies' `[[callers]]`, decided by pure functions ([`authorize`]). One
//! file per request kind; [`router`] wires them.

mod admin;
mod assertions;
pub mod audit_scope;
mod audited;
pub mod authorize;
mod body;
pub mod credentials;
mod deadline;
pub mod error;
pub mod keys;
pub mod limits;
pub mod listener;
pub mod peer;
pub mod refusals;
pub mod router;
mod signer;
mod state;
mod timeline;
mod tokens;

pub use credentials::PeerCredentials;
pub use error::ApiError;
pub use keys::{KeyView, key_view};
pub use listener::{SocketError, bind};
pub use peer::Peer;
pub use router::{SocketLimits, router};
