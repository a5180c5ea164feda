//! Bounded records of refused requests. What a refused caller sent (a
//! client_id, an audience, a kid, up to the 16 KiB of a body) is caller
//! text: stored verbatim, every refusal could cost the store kilobytes. A
//! refusal's record keeps the first bytes of each such text and replaces
//! the rest with a marker holding the full length and SHA-256, so a
//! suspected value can still be matched against the record.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::chain::AuditEntry;

/// Bytes kept of a client_id, audience, kid, jti or exe path.
pub const FIELD_BYTES: usize = 256;
/// Bytes kept of a refusal's message (it may quote them), which goes
/// first in the detail.
pub const MESSAGE_BYTES: usize = 1024;
/// Bytes kept of a whole detail: the message, then the caller's groups
/// (`socket::peer`, already bounded), with room to spare.
pub const DETAIL_BYTES: usize = 2048;

/// `text` when it fits in `max` bytes; else its first `max` bytes (cut at
/// a character boundary) followed by
/// `…(truncated: LEN bytes, sha256 HEX)`, HEX being the SHA-256 of the
/// whole text.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let hex = super::hex::hex(&Sha256::digest(text.as_bytes()));
    Cow::Owned(format!(
        "{}…(truncated: {} bytes, sha256 {hex})",
        &text[..cut],
        text.len()
    ))
}

fn bound(field: &mut Option<String>, max: usize) {
    if let Some(text) = field
        && let Cow::Owned(short) = bounded(text, max)
    {
        *text = short;
    }
}

impl AuditEntry {
    /// This entry with every caller-controlled text bounded (see the
    /// module's comment): for the record of a refusal.
    pub fn bounded(mut self) -> AuditEntry {
        for field in [
            &mut self.client_id,
            &mut self.audience,
            &mut self.kid,
            &mut self.jti,
            &mut self.exe,
        ] {
            bound(field, FIELD_BYTES);
        }
        bound(&mut self.detail, DETAIL_BYTES);
        self
    }

    /// Puts `why` first in the detail, before what the entry already
    /// says there (the caller's groups, for a socket request).
    pub fn explain(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.detail = Some(match self.detail.take() {
            Some(before) => format!("{why}; {before}"),
            None => why,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_its_length_and_hash() {
        assert_eq!(bounded("app", 256), "app");
        let long = "é".repeat(10_000);
        let short = bounded(&long, 255);
        assert!(short.starts_with(&"é".repeat(127)), "{short}");
        let hex: String = Sha256::digest(long.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            short.ends_with(&format!("…(truncated: 20000 bytes, sha256 {hex})")),
            "{short}"
        );
        assert!(short.len() < 255 + 120);
    }

    #[test]
    fn a_refusal_record_of_16_kib_fields_stays_small() {
        let huge = "x".repeat(16 * 1024);
        let entry = AuditEntry {
            client_id: Some(huge.clone()),
            audience: Some(huge.clone()),
            kid: Some(huge.clone()),
            exe: Some(huge.clone()),
            detail: Some(huge.clone()),
            ..AuditEntry::default()
        }
        .bounded();
        let size = serde_json::to_vec(&entry).unwrap().len();
        assert!(size < 4000, "{size} bytes");
    }

    #[test]
    fn a_reason_goes_before_what_the_detail_said() {
        let mut e = AuditEntry::default();
        e.explain("refused");
        assert_eq!(e.detail.as_deref(), Some("refused"));
        e.detail = Some("groups 10".into());
        e.explain("refused");
        assert_eq!(e.detail.as_deref(), Some("refused; groups 10"));
    }
}
