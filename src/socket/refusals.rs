//! Refusals in the audit trail, bounded per caller uid. Every refusal is
//! audited, but a caller that is refused over and over (a peer in no
//! policy, a listed app asking for the wrong client, a flood over its
//! limits) must not be able to fill the store's disk, or the spool's, with
//! records. So each uid has a budget (`store.audit_refusals_per_minute`, a
//! token bucket: that many at once, then refilled evenly over a minute);
//! beyond it a refusal is answered as always but not recorded one by one:
//! it is counted (`jwksd_audit_refusals_suppressed_total{why="uid_budget"}`)
//! and one summary record per uid says how many were left out, when (a
//! minute at most after the first, or once the uid has been quiet for
//! `QUIET_S`, or at shutdown). Each recorded refusal holds bounded text
//! (`AuditEntry::bounded`).
//!
//! Time is the daemon's injected clock; the sweep that writes summaries of
//! ended bursts only wakes up on a timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::audit::chain::AuditEntry;
use crate::audit::writer::{AuditError, Auditor};
use crate::clock::Clock;

/// A uid that stays over its budget gets a summary this often at most.
const SUMMARY_EVERY_S: i64 = 60;
/// A uid refused nothing for this long has its burst summarised.
const QUIET_S: i64 = 10;
/// How often the sweep looks for ended bursts.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Refusals of one uid left out of the trail since its last summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Left {
    count: u64,
    first: i64,
    last: i64,
}

#[derive(Debug)]
struct Budget {
    tokens: f64,
    /// When `tokens` was last refilled (unix seconds).
    at: i64,
    left: Option<Left>,
}

/// Every uid's budget.
pub struct RefusalGate {
    per_minute: u32,
    uids: Mutex<HashMap<u32, Budget>>,
    suppressed: Counter,
}

impl RefusalGate {
    /// `per_minute` records per uid (at least 1); `suppressed` counts the
    /// refusals left out.
    pub fn new(per_minute: u32, suppressed: Counter) -> RefusalGate {
        RefusalGate {
            per_minute: per_minute.max(1),
            uids: Mutex::default(),
            suppressed,
        }
    }

    /// What to write for a refusal `entry` of uid `entry.uid` at `now`
    /// (unix seconds): the entry, bounded, after a summary of what was
    /// left out before it when one is due; nothing when the uid is over its
    /// budget (then it is counted).
    pub fn admit(&self, entry: AuditEntry, now: i64) -> Option<Vec<AuditEntry>> {
        // No credentials: one budget for all such peers (u32::MAX).
        let uid = entry.uid.unwrap_or(u32::MAX);
        let mut uids = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        let cap = f64::from(self.per_minute);
        let budget = uids.entry(uid).or_insert(Budget {
            tokens: cap,
            at: now,
            left: None,
        });
        let elapsed = (now - budget.at).max(0) as f64;
        budget.tokens = (budget.tokens + elapsed * cap / 60.0).min(cap);
        budget.at = budget.at.max(now);
        if budget.tokens < 1.0 {
            let left = budget.left.get_or_insert(Left {
                count: 0,
                first: now,
                last: now,
            });
            left.count += 1;
            left.last = now;
            self.suppressed.inc();
            return None;
        }
        budget.tokens -= 1.0;
        let mut out = Vec::with_capacity(2);
        if let Some(left) = budget.left.take_if(|l| now - l.first >= SUMMARY_EVERY_S) {
            out.push(summary(uid, left, self.per_minute, now));
        }
        out.push(entry.bounded());
        Some(out)
    }

    /// The summaries due at `now`: of uids quiet for `QUIET_S`, or whose
    /// oldest left-out refusal is `SUMMARY_EVERY_S` old; with `all`, of
    /// every uid (at shutdown). Forgets uids with nothing left to say.
    pub fn due(&self, now: i64, all: bool) -> Vec<AuditEntry> {
        let mut uids = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        let cap = f64::from(self.per_minute);
        let mut out = Vec::new();
        uids.retain(|&uid, budget| {
            if let Some(left) = budget
                .left
                .take_if(|l| all || now - l.last >= QUIET_S || now - l.first >= SUMMARY_EVERY_S)
            {
                out.push(summary(uid, left, self.per_minute, now));
            }
            // A full bucket with nothing left out is what a new uid gets.
            let full = budget.tokens + (now - budget.at).max(0) as f64 * cap / 60.0 >= cap;
            budget.left.is_some() || !full
        });
        out.sort_by_key(|e| e.uid);
        out
    }
}

/// The one record that stands for `left`.
fn summary(uid: u32, left: Left, per_minute: u32, now: i64) -> AuditEntry {
    AuditEntry {
        at: now,
        action: "refusals".to_owned(),
        outcome: "suppressed".to_owned(),
        uid: Some(uid),
        detail: Some(format!(
            "{} refusals of uid {uid} between {} and {} (unix seconds) were counted, not recorded one by one: over store.audit_refusals_per_minute = {per_minute}",
            left.count, left.first, left.last
        )),
        ..AuditEntry::default()
    }
}

/// Writes what `RefusalGate::admit` said to write.
pub async fn write(auditor: &Auditor, records: Vec<AuditEntry>) -> Result<(), AuditError> {
    auditor.record_refusals(records).await
}

/// Writes the summaries of ended bursts every few seconds, until
/// `shutdown`; then the daemon writes the rest (`flush`) once the servers
/// have stopped.
pub async fn sweep(
    gate: Arc<RefusalGate>,
    auditor: Auditor,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        let due = gate.due(clock.now().timestamp(), false);
        if !due.is_empty()
            && let Err(e) = write(&auditor, due).await
        {
            tracing::error!(error = %e, "summary of suppressed refusals not audited");
        }
    }
}

/// Writes every summary still owed (at shutdown).
pub async fn flush(gate: &RefusalGate, auditor: &Auditor, clock: &dyn Clock) {
    let due = gate.due(clock.now().timestamp(), true);
    if !due.is_empty()
        && let Err(e) = write(auditor, due).await
    {
        tracing::error!(error = %e, "summary of suppressed refusals not audited");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000;

    fn refusal(uid: u32) -> AuditEntry {
        AuditEntry {
            at: T,
            action: "sign".into(),
            outcome: "forbidden".into(),
            uid: Some(uid),
            client_id: Some("c".repeat(16 * 1024)),
            ..AuditEntry::default()
        }
    }

    fn left_out(entries: &[AuditEntry]) -> Vec<(u32, u64)> {
        entries
            .iter()
            .filter(|e| e.action == "refusals")
            .map(|e| {
                let n = e.detail.as_deref().unwrap().split(' ').next().unwrap();
                (e.uid.unwrap(), n.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_uid_over_its_budget_is_counted_and_summarised_once() {
        let counter = Counter::default();
        let gate = RefusalGate::new(5, counter.clone());
        // 100 refusals in one second: 5 recorded, 95 counted.
        let recorded: Vec<AuditEntry> = (0..100)
            .filter_map(|_| gate.admit(refusal(4242), T))
            .flatten()
            .collect();
        assert_eq!(recorded.len(), 5);
        assert!(
            recorded
                .iter()
                .all(|e| e.client_id.as_ref().unwrap().len() < 400)
        );
        assert_eq!(counter.get(), 95);
        // Another uid has its own budget.
        assert!(gate.admit(refusal(7), T).is_some());
        // Not quiet long enough yet: no summary.
        assert!(gate.due(T + QUIET_S - 1, false).is_empty());
        let due = gate.due(T + QUIET_S, false);
        assert_eq!(left_out(&due), [(4242, 95)]);
        assert_eq!(due[0].outcome, "suppressed");
        // Said once.
        assert!(gate.due(T + QUIET_S + 1, false).is_empty());
    }

    #[test]
    fn a_flood_that_never_pauses_is_summarised_every_minute_and_refills_its_budget() {
        let gate = RefusalGate::new(60, Counter::default());
        let mut written = Vec::new();
        // Ten refusals a second for three minutes, the sweep every 5 s.
        for s in 0..180 {
            for _ in 0..10 {
                written.extend(gate.admit(refusal(1), T + s).into_iter().flatten());
            }
            if s % 5 == 0 {
                written.extend(gate.due(T + s, false));
            }
        }
        written.extend(gate.due(T + 180, true));
        let singles = written.iter().filter(|e| e.action == "sign").count();
        // A burst of 60, then one a second.
        assert_eq!(singles, 60 + 179);
        let summaries = left_out(&written);
        assert!((3..=4).contains(&summaries.len()), "{summaries:?}");
        let counted: u64 = summaries.iter().map(|(_, n)| n).sum();
        assert_eq!(
            singles as u64 + counted,
            1800,
            "every refusal is accounted for"
        );
    }

    #[test]
    fn shutdown_flushes_every_summary_and_idle_uids_are_forgotten() {
        let gate = RefusalGate::new(1, Counter::default());
        for uid in [1, 2, 3] {
            assert!(gate.admit(refusal(uid), T).is_some());
        }
        assert!(gate.admit(refusal(2), T).is_none());
        assert_eq!(left_out(&gate.due(T, true)), [(2, 1)]);
        // A minute later every bucket is full again: nothing is kept.
        assert!(gate.due(T + 60, false).is_empty());
        assert!(gate.uids.lock().unwrap().is_empty());
    }
}
