//! `jwksd init`: a working starter directory (config, policy, master key)
//! for a local daemon on SQLite. Existing files are kept, never overwritten:
//! running it twice is harmless and never replaces a master key.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// What `init` wrote and what it kept.
#[derive(Debug, Default)]
pub struct InitReport {
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    pub config: PathBuf,
}

const CONFIG: &str = r#"# jwksd config written by `jwksd init`: a local daemon on SQLite.
# Relative paths are resolved against this file's directory.

[server]
listen = "127.0.0.1:8080"
# What EHRs fetch: https in production (http is allowed for localhost only).
public_url = "http://127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
socket = "jwksd.sock"
socket_mode = "0660"

[store]
url = "sqlite://jwksd.db"

[seal]
master_key_file = "master.key"

[policies]
dir = "policies"
"#;

/// The starter policy: the example policy's values, with the user running
/// `init` as an admin caller so the quick start can sign, rotate and revoke.
fn starter_policy(uid: u32) -> String {
    format!(
        r#"# Starter policy written by `jwksd init`; see policies/default.toml in the
# jwksd sources for every field explained.
name = "default"
algorithms = ["RS384", "ES384"]
rsa_bits = 4096
rotate = "0 0 3 1 * *"      # 03:00 UTC on the 1st of every month
publish_ahead = "2d"        # >= jwks_max_age
grace = "7d"                # >= assertion_lifetime + jwks_max_age + clock_skew
jwks_max_age = "1h"
assertion_lifetime = "4m"   # <= 5m; the default 4m leaves margin for a verifier's clock
clock_skew = "1m"

[[clients]]
client_id = "my-backend-app"
audiences = [
  "https://fhir.example-ehr.com/oauth2/token",
  "http://127.0.0.1:9999/oauth2/token",
]
jku = true

[[callers]]
uid = {uid}                  # the user who ran `jwksd init`
clients = ["my-backend-app"]
admin = true
"#
    )
}

fn write_new(path: &Path, contents: &str, report: &mut InitReport) -> anyhow::Result<()> {
    if path.exists() {
        report.kept.push(path.to_path_buf());
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    report.written.push(path.to_path_buf());
    Ok(())
}

/// Writes `dir/jwksd.toml`, `dir/master.key` (mode 0600) and
/// `dir/policies/default.toml`, keeping any that exist.
pub fn run(dir: &Path) -> anyhow::Result<InitReport> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)
        .with_context(|| format!("cannot create {}", policies.display()))?;
    let mut report = InitReport {
        config: dir.join("jwksd.toml"),
        ..InitReport::default()
    };
    write_new(&dir.join("jwksd.toml"), CONFIG, &mut report)?;
    let key = dir.join("master.key");
    if key.exists() {
        report.kept.push(key);
    } else {
        crate::keys::seal::write_new_master_key_file(&key)
            .with_context(|| format!("cannot create {}", key.display()))?;
        report.written.push(key);
    }
    let uid = nix::unistd::getuid().as_raw();
    write_new(
        &policies.join("default.toml"),
        &starter_policy(uid),
        &mut report,
    )?;
    Ok(report)
}
