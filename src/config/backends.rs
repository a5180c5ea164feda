//! `[backends.NAME]` tables of `jwksd.toml` (DESIGN §5): where a policy's
//! private halves live when it names a backend other than `software`.
//!
//! Owns: the raw form of a table and its validation into a
//! [`BackendConfig`]. Does not own: reading the PIN (the daemon does, once,
//! at start: `keys::owner_file`) or talking to a token (`keys::pkcs11`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::{Checker, FieldError};
use super::policy::{SOFTWARE_BACKEND, is_backend_name};

/// Environment variable holding a PKCS#11 PIN when a table has no
/// `pin_file`; taken out of the environment when read.
pub const PKCS11_PIN_ENV: &str = "JWKSD_PKCS11_PIN";

/// Default `orphan_grace`: how long an object labelled by jwksd that the
/// store does not know stays in the token before it is destroyed. Far
/// longer than a key generation (seconds, even RSA-4096 in a slow HSM),
/// so another replica's key, generated but not yet recorded, is never
/// taken for an orphan.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(15 * 60);

/// One validated `[backends.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The table's name, as policies name it in `backend = ...`.
    pub name: String,
    /// What kind of backend: only `pkcs11` today.
    pub pkcs11: Pkcs11Config,
}

/// `kind = "pkcs11"`: a PKCS#11 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// `module`: the vendor's PKCS#11 library (`.so`).
    pub module: PathBuf,
    /// `token_label` or `slot` (exactly one).
    pub token: TokenChoice,
    /// `pin_file`: a file only its owner may read; `None` means the PIN
    /// comes from `JWKSD_PKCS11_PIN`.
    pub pin_file: Option<PathBuf>,
    /// `sessions`: signing sessions kept open; default the number of cores.
    pub sessions: usize,
    /// `orphan_grace`: see [`DEFAULT_ORPHAN_GRACE`].
    pub orphan_grace: Duration,
}

/// Which token of the module (the driver finds it by this too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChoice {
    /// The slot whose token has this label (`token_label`): survives slot
    /// renumbering, the usual choice.
    Label(String),
    /// This slot id (`slot`).
    Slot(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    kind: Option<String>,
    module: Option<String>,
    token_label: Option<String>,
    slot: Option<i64>,
    pin_file: Option<String>,
    sessions: Option<i64>,
    orphan_grace: Option<String>,
}

/// Validates every `[backends.NAME]` table, in name order.
pub(super) fn check_backends(
    c: &Checker<'_>,
    raw: BTreeMap<String, RawBackend>,
) -> Result<Vec<BackendConfig>, FieldError> {
    raw.into_iter()
        .map(|(name, table)| check_backend(c, name, table))
        .collect()
}

fn check_backend(
    c: &Checker<'_>,
    name: String,
    raw: RawBackend,
) -> Result<BackendConfig, FieldError> {
    let field = |f: &str| format!("backends.{name}.{f}");
    if name == SOFTWARE_BACKEND || !is_backend_name(&name) {
        return Err(c.err(
            "backends",
            format!("[backends.{name}]"),
            "a backend name is 1 to 63 characters of a-z, 0-9 and '_', and not \"software\" (the built-in backend)",
        ));
    }
    match raw.kind.as_deref() {
        Some("pkcs11") => {}
        Some(other) => {
            return Err(c.err(
                field("kind"),
                format!("{other:?}"),
                "must be \"pkcs11\" (the only kind of backend besides the built-in software one)",
            ));
        }
        None => return Err(c.err(field("kind"), "(unset)", "required: kind = \"pkcs11\"")),
    }
    let module = match raw.module.as_deref() {
        Some(m) => c.path(&field("module"), m)?,
        None => {
            return Err(c.err(
                field("module"),
                "(unset)",
                "required: the path of the token vendor's PKCS#11 library (.so)",
            ));
        }
    };
    let token = match (raw.token_label, raw.slot) {
        (Some(label), None) => {
            TokenChoice::Label(c.non_empty(&field("token_label"), &label)?.to_owned())
        }
        (None, Some(slot)) => TokenChoice::Slot(c.within(&field("slot"), slot, 0..=u64::MAX)?),
        (Some(label), Some(_)) => {
            return Err(c.err(
                field("token_label"),
                format!("{label:?}"),
                "set token_label or slot, not both",
            ));
        }
        (None, None) => {
            return Err(c.err(
                field("token_label"),
                "(unset)",
                "required: token_label (or slot) names the token to use",
            ));
        }
    };
    let pin_file = raw
        .pin_file
        .as_deref()
        .map(|p| c.path(&field("pin_file"), p))
        .transpose()?;
    let sessions = match raw.sessions {
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        Some(n) => c.within(&field("sessions"), n, 1..=256)?,
    };
    let orphan_grace = match raw.orphan_grace.as_deref() {
        None => DEFAULT_ORPHAN_GRACE,
        Some(text) => Duration::from_secs(c.span(&field("orphan_grace"), text)?.as_secs()),
    };
    Ok(BackendConfig {
        name,
        pkcs11: Pkcs11Config {
            module,
            token,
            pin_file,
            sessions,
            orphan_grace,
        },
    })
}
