//! The files jwksd reads: the daemon config (`jwksd.toml`, [`daemon`]) and
//! the policy files (`policies/*.toml`, [`policy`]). Each goes from its raw
//! serde form to validated values; every refusal names the file, the field
//! and the rule, through the one [`check`] vocabulary both share.
//!
//! Owns: parsing and validating. Does not own: acting on the values (the
//! daemon wires them, the lifecycle schedules from them).

pub mod backends;
pub mod check;
pub mod daemon;
pub mod live;
pub mod pg_tls;
pub mod policy;
pub mod url;

pub use check::{FieldError, ReadError, SyntaxError};
pub use daemon::{Config, ConfigError, ServerConfig, StoreUrl, default_config_path, redact_url};
pub use live::LivePolicies;
pub use policy::{Policies, Policy, PolicyError};
