//! The hash-chained audit trail: what one record holds, how its hash is
//! computed, and how a chain is verified. Storage lives in `store`; the
//! batching writer lives in `writer`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the caller of the auditor describes it. Assertions
/// themselves are never part of an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// `sign`, `rotate`, `revoke`, `activate`, `generate`, `retire`, `keys`, `reload`, `audit`.
    pub action: String,
    /// `ok`, or the error code of a refusal (`forbidden`, `bad_request`, ...).
    pub outcome: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// The caller's executable path, where the kernel tells it.
    pub exe: Option<String>,
    pub client_id: Option<String>,
    pub audience: Option<String>,
    pub kid: Option<String>,
    pub jti: Option<String>,
    /// Free text: why a request was refused, what a transition did.
    pub detail: Option<String>,
}

/// An entry as stored: its place in the chain and the hashes that bind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: i64,
    #[serde(flatten)]
    entry: &'a AuditEntry,
}

/// The hash of record `seq` holding `entry`, chained to `prev_hash`:
/// hex SHA-256 over `prev_hash`, a newline and the record's JSON (fixed field
/// order), so editing, deleting or reordering any record breaks every later
/// link.
pub fn chain_hash(prev_hash: &str, seq: i64, entry: &AuditEntry) -> String {
    let body = serde_json::to_vec(&Hashed { seq, entry }).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(&body);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The records `entries` become when appended to a chain whose newest record
/// is `last` (seq, hash), or to an empty chain (`None`). Both stores append
/// through this, so the chain is computed one way only.
pub fn chain_after(last: Option<(i64, String)>, entries: &[AuditEntry]) -> Vec<AuditRecord> {
    let (mut seq, mut prev) = last.unwrap_or((0, GENESIS_HASH.to_owned()));
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let hash = chain_hash(&prev, seq, e);
        out.push(AuditRecord {
            seq,
            entry: e.clone(),
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    out
}

/// A broken link found by [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A record's `prev_hash` is not the hash of the record before it: one
    /// was deleted, inserted or reordered.
    #[error(
        "audit record {seq}: prev_hash does not match record {prev_seq} (a record was deleted, inserted or reordered)"
    )]
    Link { seq: i64, prev_seq: i64 },
    /// A record's content does not hash to its stored hash: it was edited.
    #[error("audit record {seq}: content does not match its hash (the record was edited)")]
    Content { seq: i64 },
    /// Sequence numbers are not consecutive.
    #[error("audit record {seq} follows record {prev_seq}: records between them are missing")]
    Gap { seq: i64, prev_seq: i64 },
}

/// Checks a run of consecutive records. `before` is the hash the first record
/// must chain to (the genesis hash, or the anchor left by pruning).
pub fn verify_chain(before: &str, records: &[AuditRecord]) -> Result<usize, ChainError> {
    let mut prev_hash = before.to_owned();
    let mut prev_seq: Option<i64> = None;
    for r in records {
        if let Some(p) = prev_seq
            && r.seq != p + 1
        {
            return Err(ChainError::Gap {
                seq: r.seq,
                prev_seq: p,
            });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::Link {
                seq: r.seq,
                prev_seq: prev_seq.unwrap_or(r.seq - 1),
            });
        }
        if chain_hash(&r.prev_hash, r.seq, &r.entry) != r.hash {
            return Err(ChainError::Content { seq: r.seq });
        }
        prev_hash = r.hash.clone();
        prev_seq = Some(r.seq);
    }
    Ok(records.len())
}

/// Checks a whole stored chain: it starts right after `anchor` (the last
/// record removed by retention pruning) or at record 1 with the genesis hash.
pub fn verify_stored(
    anchor: Option<(i64, String)>,
    records: &[AuditRecord],
) -> Result<usize, ChainError> {
    let (seq, hash) = anchor.unwrap_or((0, GENESIS_HASH.to_owned()));
    if let Some(first) = records.first()
        && first.seq != seq + 1
    {
        return Err(ChainError::Gap {
            seq: first.seq,
            prev_seq: seq,
        });
    }
    verify_chain(&hash, records)
}

/// Helper for building entries stamped with a time.
pub fn entry(at: DateTime<Utc>, action: &str, outcome: &str) -> AuditEntry {
    AuditEntry {
        at: at.timestamp(),
        action: action.to_owned(),
        outcome: outcome.to_owned(),
        ..AuditEntry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut e = entry(
                    DateTime::from_timestamp(1_700_000_000 + seq, 0).unwrap(),
                    "sign",
                    "ok",
                );
                e.client_id = Some(format!("client-{seq}"));
                let hash = chain_hash(&prev, seq, &e);
                let r = AuditRecord {
                    seq,
                    entry: e,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(verify_chain(GENESIS_HASH, &chain(5)), Ok(5));
    }

    #[test]
    fn chain_after_builds_the_same_chain_in_one_go_or_in_parts() {
        let whole = chain(5);
        let entries: Vec<AuditEntry> = whole.iter().map(|r| r.entry.clone()).collect();
        assert_eq!(chain_after(None, &entries), whole);
        let first = chain_after(None, &entries[..2]);
        let last = first.last().map(|r| (r.seq, r.hash.clone()));
        let rest = chain_after(last, &entries[2..]);
        assert_eq!([first, rest].concat(), whole);
        assert!(chain_after(None, &[]).is_empty());
    }

    #[test]
    fn hex_writes_what_format_wrote_so_stored_chains_still_verify() {
        let every_byte: Vec<u8> = (0..=255).collect();
        let by_format: String = every_byte.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&every_byte), by_format);
        assert_eq!(
            chain_hash(GENESIS_HASH, 1, &AuditEntry::default()).len(),
            64
        );
    }

    #[test]
    fn an_edited_record_is_found() {
        let mut c = chain(5);
        c[2].entry.outcome = "forbidden".into();
        assert_eq!(
            verify_chain(GENESIS_HASH, &c),
            Err(ChainError::Content { seq: 3 })
        );
    }

    #[test]
    fn a_deleted_record_is_found() {
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(
            verify_chain(GENESIS_HASH, &c),
            Err(ChainError::Gap {
                seq: 4,
                prev_seq: 2
            })
        );
    }

    #[test]
    fn swapped_records_are_found() {
        let mut c = chain(5);
        c.swap(1, 2);
        assert!(verify_chain(GENESIS_HASH, &c).is_err());
    }
}
