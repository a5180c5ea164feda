//! Threads for CPU-heavy crypto, kept off the async runtime so that a slow
//! operation never delays a request: the RSA signing threads
//! ([`signing_pool`]) and low-priority key generation ([`background`]).

pub mod background;
pub mod signing_pool;
