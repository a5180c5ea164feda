//! Command-line definitions (clap) only; `main` turns them into actions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// jwksd: key management and JWKS publishing for private_key_jwt clients.
#[derive(Debug, Parser)]
#[command(name = "jwksd", version, about)]
pub struct Cli {
    /// Daemon config file. Default: $JWKSD_CONFIG, then ./jwksd.toml, then /etc/jwksd/jwksd.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's Unix socket (default: server.socket of the config).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// Run even as root (refused by default: the daemon needs no privileges).
        #[arg(long)]
        allow_root: bool,
    },
    /// Write a starter config, policy and master key (existing files are kept).
    Init {
        /// Directory to write into.
        #[arg(long, default_value = ".jwksd")]
        dir: PathBuf,
        /// Run even as root (refused by default: the files would belong to
        /// root, and the daemon's user could not read them).
        #[arg(long)]
        allow_root: bool,
    },
    /// List, rotate or revoke keys (through the daemon's socket).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a signed client assertion (through the daemon's socket).
    Sign(SignArgs),
    /// Print an access token from the daemon's token broker (through the socket).
    Token(TokenArgs),
    /// Print the published JWKS of a set, exactly as the HTTP endpoint serves it.
    Jwks {
        #[arg(long, default_value = "default")]
        set: String,
    },
    /// Validate policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read and verify the audit trail (through the daemon's socket).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Master key operations (with the daemon stopped).
    #[command(subcommand)]
    Seal(SealCommand),
    /// Check the key backends of jwksd.toml (PKCS#11 tokens).
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Run the lifecycle of a policy on a simulated clock and print the timeline.
    Simulate(SimulateArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Keys with state and timestamps.
    List {
        #[arg(long)]
        set: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Schedule the next rotation as early as allowed, or with --now activate it at once.
    /// Without --alg, every algorithm of the set rotates.
    Rotate {
        #[arg(long)]
        set: String,
        /// RS384 or ES384: rotate only this algorithm (default: every algorithm of the set).
        #[arg(long)]
        alg: Option<String>,
        /// Activate the pending key now, skipping pre-publication; the answer says
        /// until when verifiers with a cached JWKS may refuse the new signer.
        #[arg(long)]
        now: bool,
    },
    /// Remove a key from the JWKS at once and destroy its private half.
    Revoke { kid: String },
    /// Draw the live keys of your sets as an SVG timeline: past spans from the
    /// store's timestamps, planned ones from the schedule, and a "now" line.
    Timeline {
        /// Where to write the picture.
        #[arg(long, value_name = "FILE")]
        svg: PathBuf,
        /// Only this set (default: every set you may use).
        #[arg(long)]
        set: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[arg(long)]
    pub client_id: String,
    /// The token endpoint URL, exactly as registered in the policy.
    #[arg(long)]
    pub aud: String,
    /// RS384 or ES384 (default: the first of the policy's algorithms).
    #[arg(long)]
    pub alg: Option<String>,
    #[arg(long)]
    pub set: Option<String>,
    /// Assertion lifetime in seconds (default and maximum: the policy's assertion_lifetime).
    #[arg(long)]
    pub lifetime: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub client_id: String,
    /// The token endpoint URL, exactly as listed in the client's audiences.
    #[arg(long)]
    pub token_url: String,
    /// Space-separated scopes, a subset of the client's scopes.
    #[arg(long)]
    pub scope: String,
    /// Seconds the token must still be valid for (default 30).
    #[arg(long)]
    pub min_ttl: Option<u64>,
    /// RS384 or ES384 for the assertion (default: the first of the policy's algorithms).
    #[arg(long)]
    pub alg: Option<String>,
    #[arg(long)]
    pub set: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files (default: every file of the config's policies dir).
    Check { files: Vec<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Log in to each token (or the one named), list the mechanisms jwksd
    /// needs, and sign and verify with a session key of each algorithm;
    /// exits non-zero naming what is missing.
    Check { name: Option<String> },
    /// List the key objects jwksd made in each token (or the one named):
    /// label (the kid, or `jwksd-new-...` for an unfinished generation),
    /// class, and the private halves' protection attributes.
    Objects {
        name: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SealCommand {
    /// Re-seal every private key under a new master key and replace the
    /// master key file; the old key opens nothing afterwards.
    RotateMaster {
        /// Run even as root (refused by default: the new key file would
        /// belong to root, and the daemon's user could not read it).
        #[arg(long)]
        allow_root: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the keyed chain; exits non-zero at the first broken link.
    Verify {
        /// A witness `SEQ:MAC` printed earlier by `audit head` (or logged
        /// as "audit head" by the daemon): also prove that record SEQ still
        /// has that MAC, so nothing up to it changed.
        #[arg(long, value_name = "SEQ:MAC")]
        head: Option<String>,
    },
    /// Print `SEQ:MAC` of the newest record (MAC in hex), a witness to keep
    /// outside the store for `audit verify --head`.
    Head,
    /// The latest records.
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[arg(long)]
    pub policy: PathBuf,
    #[arg(long)]
    pub days: u32,
    /// Start of the simulation (RFC 3339; default: now).
    #[arg(long)]
    pub start: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Also draw the timeline of the same run as an SVG picture into FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}
