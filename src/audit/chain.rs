//! The keyed audit chain: what one record holds, how its MAC is computed,
//! and how a chain, its retention anchor and an outside witness are
//! verified. Storage lives in `store`; the batching writer in `writer`; the
//! key in `key`.
//!
//! Each record's `hash` is HMAC-SHA-256, under the chain key derived from
//! the master key, over the `hash` of the record before it (`prev_hash`),
//! a newline and the record's JSON (fixed field order): write access to the
//! store is not enough to edit, insert, delete or reorder a record and
//! recompute the rest. Records written before the chain was keyed
//! (migration 4) keep their plain SHA-256 hashes (`key` is `None`); the
//! first keyed record MACs the last of their hashes, so it binds all of
//! them. Where the master key changed (`seal rotate-master`), the switch
//! record is MAC'd under both chain keys (see [`switch_mac`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::hex::hex;
use super::key::{AuditKey, ChainKeys};

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

/// An entry as stored: its place in the chain and the MACs that bind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    /// The record's MAC (hex), or its SHA-256 for an unkeyed record. The
    /// name stays `hash` (DESIGN §4: `audit tail --json`).
    pub hash: String,
    /// The id of the chain key that MACs this record; `None` for a record
    /// of the unkeyed chain written before migration 4. Not part of the
    /// JSON answers (DESIGN §4 fixes their fields).
    #[serde(skip)]
    pub key: Option<String>,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: i64,
    #[serde(flatten)]
    entry: &'a AuditEntry,
}

fn body(seq: i64, entry: &AuditEntry) -> Vec<u8> {
    serde_json::to_vec(&Hashed { seq, entry }).unwrap_or_default()
}

/// The unkeyed hash of the chain before migration 4: hex SHA-256 over
/// `prev_hash`, a newline and the record's JSON. Kept to verify records
/// written before the upgrade, and by tests to forge records the way an
/// attacker without the key would.
pub fn chain_hash(prev_hash: &str, seq: i64, entry: &AuditEntry) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(body(seq, entry));
    hex(&h.finalize())
}

/// The MAC of record `seq` holding `entry`, chained to `prev_hash`: hex
/// HMAC-SHA-256 under `key` over the same bytes [`chain_hash`] hashes.
pub fn chain_mac(key: &AuditKey, prev_hash: &str, seq: i64, entry: &AuditEntry) -> String {
    let mut mac = key.context();
    mac.update(prev_hash.as_bytes());
    mac.update(b"\n");
    mac.update(&body(seq, entry));
    hex(mac.sign().as_ref())
}

/// The MAC of the record where the chain passes from `old`'s key to
/// `new`'s (`seal rotate-master`): MAC'd under both, the old key's MAC
/// taking the place of `prev_hash` under the new key. Under the new key, so
/// that `audit verify` with the current master key checks it and the chain
/// ends under the current key; under the old key too, so that only a holder
/// of both master keys (the rotation) can have written it.
pub fn switch_mac(
    old: &AuditKey,
    new: &AuditKey,
    prev_hash: &str,
    seq: i64,
    entry: &AuditEntry,
) -> String {
    chain_mac(new, &chain_mac(old, prev_hash, seq, entry), seq, entry)
}

/// The records `entries` become when appended under `key` to a chain whose
/// newest record is `last` (seq, hash), or to an empty chain (`None`). Both
/// stores append through this, so the chain is computed one way only.
pub fn chain_after(
    last: Option<(i64, String)>,
    key: &AuditKey,
    entries: &[AuditEntry],
) -> Vec<AuditRecord> {
    let (mut seq, mut prev) = last.unwrap_or((0, GENESIS_HASH.to_owned()));
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let hash = chain_mac(key, &prev, seq, e);
        out.push(AuditRecord {
            seq,
            entry: e.clone(),
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            key: Some(key.id().to_owned()),
        });
    }
    out
}

/// The switch record `entry` becomes when `seal rotate-master` appends it
/// after `last`, passing the chain from `old` to `new`.
pub fn switch_after(
    last: Option<(i64, String)>,
    old: &AuditKey,
    new: &AuditKey,
    entry: AuditEntry,
) -> AuditRecord {
    let (seq, prev_hash) = last.unwrap_or((0, GENESIS_HASH.to_owned()));
    let seq = seq + 1;
    AuditRecord {
        hash: switch_mac(old, new, &prev_hash, seq, &entry),
        seq,
        entry,
        prev_hash,
        key: Some(new.id().to_owned()),
    }
}

/// Where the stored chain starts once retention pruned older records: the
/// (seq, hash) of the last record removed, and its MAC under the chain key
/// (`None` for an anchor written before migration 4). Kept in `meta` as
/// `"<seq>:<hash>"` or `"<seq>:<hash>:<mac>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
    pub mac: Option<String>,
}

const ANCHOR_LABEL: &[u8] = b"jwksd audit anchor v1\n";

impl Anchor {
    /// The anchor after pruning up to record `seq` (whose hash is `hash`),
    /// authenticated under `key`.
    pub fn keyed(key: &AuditKey, seq: i64, hash: String) -> Anchor {
        let mac = Self::mac_of(key, seq, &hash);
        Anchor {
            seq,
            hash,
            mac: Some(mac),
        }
    }

    fn mac_of(key: &AuditKey, seq: i64, hash: &str) -> String {
        let mut mac = key.context();
        mac.update(ANCHOR_LABEL);
        mac.update(format!("{seq}:{hash}").as_bytes());
        hex(mac.sign().as_ref())
    }

    /// Whether `key` authenticates this anchor.
    pub fn is_authentic(&self, key: &AuditKey) -> bool {
        self.mac
            .as_deref()
            .is_some_and(|m| m == Self::mac_of(key, self.seq, &self.hash))
    }

    pub fn format(&self) -> String {
        match &self.mac {
            Some(mac) => format!("{}:{}:{mac}", self.seq, self.hash),
            None => format!("{}:{}", self.seq, self.hash),
        }
    }

    pub fn parse(v: &str) -> Option<Anchor> {
        let mut parts = v.split(':');
        let seq = parts.next()?.parse().ok()?;
        let hash = parts.next()?.to_owned();
        let mac = parts.next().map(str::to_owned);
        if parts.next().is_some() {
            return None;
        }
        Some(Anchor { seq, hash, mac })
    }
}

/// A broken link found by [`verify_stored`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A record's `prev_hash` is not the hash of the record before it: one
    /// was deleted, inserted or reordered.
    #[error(
        "audit record {seq}: prev_hash does not match record {prev_seq} (a record was deleted, inserted or reordered)"
    )]
    Link { seq: i64, prev_seq: i64 },
    /// A record's content does not match its MAC: it was edited, or its MAC
    /// recomputed by someone without the chain key.
    #[error(
        "audit record {seq}: content does not match its MAC (the record was edited, or its MAC recomputed without the audit key)"
    )]
    Content { seq: i64 },
    /// Sequence numbers are not consecutive.
    #[error("audit record {seq} follows record {prev_seq}: records between them are missing")]
    Gap { seq: i64, prev_seq: i64 },
    /// An unkeyed record after keyed ones: only the chain written before
    /// the upgrade may be unkeyed.
    #[error(
        "audit record {seq} is unkeyed but follows keyed records (it was rewritten without the audit key)"
    )]
    Unkeyed { seq: i64 },
    /// A record names a chain key the master key does not lead to.
    #[error(
        "audit record {seq} is MAC'd under audit key {key}, which the current master key does not lead to (a forged record, or the key wrap left by seal rotate-master was removed)"
    )]
    UnknownKey { seq: i64, key: String },
    /// The chain went back to a key that a rotation had replaced.
    #[error("audit record {seq} returns to audit key {key}, replaced by an earlier rotate-master")]
    Revisited { seq: i64, key: String },
    /// The newest record is not MAC'd under the current key.
    #[error(
        "the newest audit record {seq} is not MAC'd under the current master key's audit key: the keyed records after it were removed or replaced"
    )]
    Stale { seq: i64 },
    /// A retention anchor while no retention is configured.
    #[error(
        "the store says records up to {seq} were pruned by retention, but store.audit_retention is not configured: records were deleted"
    )]
    AnchorWithoutRetention { seq: i64 },
    /// A retention anchor the chain key does not authenticate.
    #[error(
        "the retention anchor (records up to {seq} pruned) is not authenticated by the audit key: it was forged or altered"
    )]
    AnchorForged { seq: i64 },
}

/// What a verified chain holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: usize,
    /// Of those, records of the unkeyed chain from before the upgrade:
    /// checked by hash, and bound by the first keyed record's MAC.
    pub unkeyed: usize,
}

/// Checks a whole stored chain: it starts right after `anchor` (the last
/// record removed by retention pruning, which must be authenticated, and
/// allowed only when `retention` is configured) or at record 1 with the
/// genesis hash, and ends under the current chain key of `keys`.
pub fn verify_stored(
    keys: &ChainKeys<'_>,
    retention: bool,
    anchor: Option<&Anchor>,
    records: &[AuditRecord],
) -> Result<Verified, ChainError> {
    let (mut prev_seq, mut prev_hash) = match anchor {
        None => (0, GENESIS_HASH),
        Some(a) => {
            if !retention {
                return Err(ChainError::AnchorWithoutRetention { seq: a.seq });
            }
            // Retention runs in the daemon under the current key, and
            // rotate-master re-authenticates the anchor under the new one.
            if !a.is_authentic(keys.current) {
                return Err(ChainError::AnchorForged { seq: a.seq });
            }
            (a.seq, a.hash.as_str())
        }
    };
    let mut key: Option<&AuditKey> = None;
    let mut replaced: Vec<&str> = Vec::new();
    let mut unkeyed = 0;
    for r in records {
        if r.seq != prev_seq + 1 {
            return Err(ChainError::Gap {
                seq: r.seq,
                prev_seq,
            });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::Link {
                seq: r.seq,
                prev_seq,
            });
        }
        let expected = match r.key.as_deref() {
            None if key.is_some() => return Err(ChainError::Unkeyed { seq: r.seq }),
            None => {
                unkeyed += 1;
                chain_hash(&r.prev_hash, r.seq, &r.entry)
            }
            Some(id) => {
                let k = keys.get(id).ok_or_else(|| ChainError::UnknownKey {
                    seq: r.seq,
                    key: id.to_owned(),
                })?;
                let mac = match key {
                    Some(old) if old.id() != id => {
                        if replaced.contains(&id) {
                            return Err(ChainError::Revisited {
                                seq: r.seq,
                                key: id.to_owned(),
                            });
                        }
                        replaced.push(old.id());
                        switch_mac(old, k, &r.prev_hash, r.seq, &r.entry)
                    }
                    _ => chain_mac(k, &r.prev_hash, r.seq, &r.entry),
                };
                key = Some(k);
                mac
            }
        };
        if expected != r.hash {
            return Err(ChainError::Content { seq: r.seq });
        }
        prev_hash = &r.hash;
        prev_seq = r.seq;
    }
    // Without this, rewriting the keyed part as unkeyed records, or
    // dropping everything after a rotation, would leave a valid chain.
    if let Some(last) = records.last()
        && last.key.as_deref() != Some(keys.current.id())
    {
        return Err(ChainError::Stale { seq: last.seq });
    }
    Ok(Verified {
        records: records.len(),
        unkeyed,
    })
}

/// An operator's witness of the chain, kept outside the store: the seq and
/// MAC of a record, as `jwksd audit head` prints them (`SEQ:MAC`, the MAC in
/// lowercase hex like `hash` in `audit tail --json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub seq: i64,
    pub mac: String,
}

impl std::fmt::Display for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.mac)
    }
}

impl std::str::FromStr for Witness {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "--head {s:?}: must be SEQ:MAC as `jwksd audit head` prints it (a record number, a colon, 64 hex digits)"
            )
        };
        let (seq, mac) = s.trim().split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        let mac = mac.to_ascii_lowercase();
        if seq < 1 || mac.len() != 64 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Witness { seq, mac })
    }
}

/// Why a witness does not match the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    #[error(
        "audit record {seq} does not match the witness: it or a record before it was changed, even if the chain was recomputed"
    )]
    Changed { seq: i64 },
    #[error(
        "audit record {seq} of the witness is missing: the newest records were deleted (the chain ends at {newest})"
    )]
    Missing { seq: i64, newest: i64 },
    #[error(
        "audit record {seq} of the witness was pruned by retention (records up to {anchor} are gone): take a newer witness"
    )]
    Pruned { seq: i64, anchor: i64 },
}

/// Checks that the stored chain still holds the witnessed record with the
/// witnessed MAC. Since each MAC covers the one before it, a match proves
/// that no record up to it changed; run after [`verify_stored`].
pub fn check_witness(
    witness: &Witness,
    anchor: Option<&Anchor>,
    records: &[AuditRecord],
) -> Result<(), WitnessError> {
    let first = records.first().map_or(i64::MAX, |r| r.seq);
    if let Some(a) = anchor
        && witness.seq <= a.seq
    {
        return if witness.seq == a.seq && a.hash == witness.mac {
            Ok(())
        } else {
            Err(WitnessError::Pruned {
                seq: witness.seq,
                anchor: a.seq,
            })
        };
    }
    match records.iter().find(|r| r.seq == witness.seq) {
        Some(r) if r.hash == witness.mac => Ok(()),
        Some(_) => Err(WitnessError::Changed { seq: witness.seq }),
        None if witness.seq < first => Err(WitnessError::Changed { seq: witness.seq }),
        None => Err(WitnessError::Missing {
            seq: witness.seq,
            newest: records.last().map_or(0, |r| r.seq),
        }),
    }
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
    use crate::keys::seal::MasterKey;

    fn key() -> AuditKey {
        AuditKey::derive(&MasterKey::generate().unwrap().0)
    }

    fn entries(n: i64) -> Vec<AuditEntry> {
        (1..=n)
            .map(|seq| {
                let mut e = entry(
                    DateTime::from_timestamp(1_700_000_000 + seq, 0).unwrap(),
                    "sign",
                    "ok",
                );
                e.client_id = Some(format!("client-{seq}"));
                e
            })
            .collect()
    }

    fn verify(k: &AuditKey, records: &[AuditRecord]) -> Result<Verified, ChainError> {
        verify_stored(&ChainKeys::resolve(k, &[]), false, None, records)
    }

    /// Rewrites every record from `from` on the way an attacker who can
    /// write the store but lacks the chain key would: the unkeyed hash.
    fn recompute_unkeyed(c: &mut [AuditRecord], from: usize) {
        for i in from..c.len() {
            let prev = if i == 0 {
                GENESIS_HASH.to_owned()
            } else {
                c[i - 1].hash.clone()
            };
            c[i].prev_hash = prev;
            c[i].hash = chain_hash(&c[i].prev_hash, c[i].seq, &c[i].entry);
        }
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let k = key();
        let c = chain_after(None, &k, &entries(5));
        assert_eq!(
            verify(&k, &c),
            Ok(Verified {
                records: 5,
                unkeyed: 0
            })
        );
    }

    #[test]
    fn chain_after_builds_the_same_chain_in_one_go_or_in_parts() {
        let k = key();
        let es = entries(5);
        let whole = chain_after(None, &k, &es);
        let first = chain_after(None, &k, &es[..2]);
        let last = first.last().map(|r| (r.seq, r.hash.clone()));
        let rest = chain_after(last, &k, &es[2..]);
        assert_eq!([first, rest].concat(), whole);
        assert!(chain_after(None, &k, &[]).is_empty());
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
        let k = key();
        let mut c = chain_after(None, &k, &entries(5));
        c[2].entry.outcome = "forbidden".into();
        assert_eq!(verify(&k, &c), Err(ChainError::Content { seq: 3 }));
    }

    #[test]
    fn an_edit_with_every_later_hash_recomputed_is_found() {
        let k = key();
        let mut c = chain_after(None, &k, &entries(5));
        c[2].entry.outcome = "forbidden".into();
        // Without the key: the unkeyed algorithm, labelled as keyed.
        let mut unkeyed = c.clone();
        recompute_unkeyed(&mut unkeyed, 2);
        assert_eq!(verify(&k, &unkeyed), Err(ChainError::Content { seq: 3 }));
        // With another master key's chain key.
        let other = key();
        let forged = chain_after(
            Some((2, c[1].hash.clone())),
            &other,
            &c[2..].iter().map(|r| r.entry.clone()).collect::<Vec<_>>(),
        );
        let c2 = [c[..2].to_vec(), forged].concat();
        assert!(matches!(
            verify(&k, &c2),
            Err(ChainError::UnknownKey { seq: 3, .. })
        ));
        // Relabelled as unkeyed records of the old chain: no unkeyed record
        // may follow a keyed one, nor end the chain.
        for r in &mut unkeyed[2..] {
            r.key = None;
        }
        assert_eq!(verify(&k, &unkeyed), Err(ChainError::Unkeyed { seq: 3 }));
        let mut all_unkeyed = c.clone();
        recompute_unkeyed(&mut all_unkeyed, 0);
        for r in &mut all_unkeyed {
            r.key = None;
        }
        assert_eq!(verify(&k, &all_unkeyed), Err(ChainError::Stale { seq: 5 }));
    }

    #[test]
    fn a_deleted_record_is_found() {
        let k = key();
        let mut c = chain_after(None, &k, &entries(5));
        c.remove(2);
        assert_eq!(
            verify(&k, &c),
            Err(ChainError::Gap {
                seq: 4,
                prev_seq: 2
            })
        );
    }

    #[test]
    fn swapped_records_are_found() {
        let k = key();
        let mut c = chain_after(None, &k, &entries(5));
        c.swap(1, 2);
        assert!(verify(&k, &c).is_err());
    }

    #[test]
    fn an_unkeyed_prefix_verifies_and_is_bound_by_the_first_keyed_record() {
        let k = key();
        let es = entries(6);
        let mut old: Vec<AuditRecord> = chain_after(None, &k, &es[..3]);
        recompute_unkeyed(&mut old, 0);
        for r in &mut old {
            r.key = None;
        }
        let last = old.last().map(|r| (r.seq, r.hash.clone()));
        let c = [old, chain_after(last, &k, &es[3..])].concat();
        assert_eq!(
            verify(&k, &c),
            Ok(Verified {
                records: 6,
                unkeyed: 3
            })
        );
        // The unkeyed part rewritten consistently still breaks at the link
        // into the keyed part.
        let mut edited = c.clone();
        edited[0].entry.outcome = "forbidden".into();
        recompute_unkeyed(&mut edited[..3], 0);
        assert_eq!(
            verify(&k, &edited),
            Err(ChainError::Link {
                seq: 4,
                prev_seq: 3
            })
        );
    }

    #[test]
    fn anchors_are_authenticated_and_need_retention() {
        let k = key();
        let c = chain_after(None, &k, &entries(5));
        let keys = ChainKeys::resolve(&k, &[]);
        let anchor = Anchor::keyed(&k, 2, c[1].hash.clone());
        assert_eq!(Anchor::parse(&anchor.format()), Some(anchor.clone()));
        assert!(verify_stored(&keys, true, Some(&anchor), &c[2..]).is_ok());
        assert_eq!(
            verify_stored(&keys, false, Some(&anchor), &c[2..]),
            Err(ChainError::AnchorWithoutRetention { seq: 2 })
        );
        let forged = Anchor {
            mac: None,
            ..anchor.clone()
        };
        assert_eq!(
            verify_stored(&keys, true, Some(&forged), &c[2..]),
            Err(ChainError::AnchorForged { seq: 2 })
        );
        let other = Anchor::keyed(&key(), 2, c[1].hash.clone());
        assert_eq!(
            verify_stored(&keys, true, Some(&other), &c[2..]),
            Err(ChainError::AnchorForged { seq: 2 })
        );
    }

    #[test]
    fn the_chain_verifies_across_a_switch_of_keys_with_only_the_new_key() {
        let (old, new) = (key(), key());
        let es = entries(5);
        let before = chain_after(None, &old, &es[..2]);
        let last = before.last().map(|r| (r.seq, r.hash.clone()));
        let switch = switch_after(last, &old, &new, es[2].clone());
        let after = chain_after(Some((switch.seq, switch.hash.clone())), &new, &es[3..]);
        let c = [before, vec![switch.clone()], after].concat();
        let wraps = [(
            old.id().to_owned(),
            new.id().to_owned(),
            new.wrap(&old).unwrap(),
        )];
        let keys = ChainKeys::resolve(&new, &wraps);
        assert_eq!(verify_stored(&keys, false, None, &c).unwrap().records, 5);
        // Without the wrap, the old records cannot be checked.
        assert!(matches!(
            verify(&new, &c),
            Err(ChainError::UnknownKey { seq: 1, .. })
        ));
        // A switch MAC'd under the new key alone is refused.
        let mut c2 = c.clone();
        c2[2].hash = chain_mac(&new, &c2[2].prev_hash, 3, &c2[2].entry);
        assert_eq!(
            verify_stored(&keys, false, None, &c2),
            Err(ChainError::Content { seq: 3 })
        );
        // Cut after the switch's predecessor: ends under the old key.
        assert_eq!(
            verify_stored(&keys, false, None, &c[..2]),
            Err(ChainError::Stale { seq: 2 })
        );
    }

    #[test]
    fn a_witness_matches_only_the_record_it_names() {
        let k = key();
        let c = chain_after(None, &k, &entries(5));
        let w: Witness = format!("3:{}", c[2].hash).parse().unwrap();
        assert_eq!(w.to_string(), format!("3:{}", c[2].hash));
        assert_eq!(check_witness(&w, None, &c), Ok(()));
        let other = chain_after(None, &k, &entries(5).into_iter().rev().collect::<Vec<_>>());
        assert_eq!(
            check_witness(&w, None, &other),
            Err(WitnessError::Changed { seq: 3 })
        );
        assert_eq!(
            check_witness(&w, None, &c[..2]),
            Err(WitnessError::Missing { seq: 3, newest: 2 })
        );
        let anchor = Anchor::keyed(&k, 4, c[3].hash.clone());
        assert_eq!(
            check_witness(&w, Some(&anchor), &c[4..]),
            Err(WitnessError::Pruned { seq: 3, anchor: 4 })
        );
        for bad in ["3", "x:ab", "3:zz", "0:00"] {
            assert!(bad.parse::<Witness>().is_err(), "{bad}");
        }
    }
}
