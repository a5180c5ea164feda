//! Per-caller limits on signature requests, so that one caller flooding the
//! socket cannot starve another: a bound on requests in flight per peer uid
//! (`[[callers]] max_concurrent`), a bounded first-come-first-served queue
//! of that caller's excess (`max_queued`, each waiting `queue_timeout` at
//! most) and an optional rate (`max_per_second`, a token bucket). Every
//! caller has a queue of its own: a request only ever waits behind requests
//! of the same uid, so a flood queues behind itself and nobody else. Over
//! a limit the answer is 429 (with `Retry-After`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::peer::{Grant, Peer};

/// The bounds of one caller's concurrency and queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    concurrent: u32,
    queued: u32,
    wait: Duration,
}

/// The limits in force for one peer: the most generous of its entries.
fn limits_for(grants: &[Grant<'_>]) -> Option<(Bounds, Option<u32>)> {
    let bounds = Bounds {
        concurrent: grants.iter().map(|(_, c)| c.max_concurrent).max()?,
        queued: grants.iter().map(|(_, c)| c.max_queued).max()?,
        wait: Duration::from_secs(
            grants
                .iter()
                .map(|(_, c)| c.queue_timeout.as_secs())
                .max()?,
        ),
    };
    // Unlimited if any entry is; else the highest rate.
    let rate = if grants.iter().any(|(_, c)| c.max_per_second.is_none()) {
        None
    } else {
        grants.iter().filter_map(|(_, c)| c.max_per_second).max()
    };
    Some((bounds, rate))
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One caller's slots and queue. Replaced whole when a reload changes its
/// bounds; requests holding or waiting for the old slots keep them.
struct Caller {
    bounds: Bounds,
    /// `bounds.concurrent` permits; tokio's semaphore hands them out in
    /// the order they were asked for, which makes the queue FIFO.
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot now.
    waiting: Arc<AtomicU32>,
}

impl Caller {
    fn new(bounds: Bounds) -> Self {
        Caller {
            bounds,
            slots: Arc::new(Semaphore::new(bounds.concurrent as usize)),
            waiting: Arc::default(),
        }
    }
}

/// A place in a caller's queue, given back when the wait ends either way.
struct Waiting(Arc<AtomicU32>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State of every caller seen, by uid.
#[derive(Default)]
pub struct CallerLimits {
    callers: Mutex<HashMap<u32, Caller>>,
    buckets: Mutex<HashMap<u32, Bucket>>,
}

impl CallerLimits {
    /// Admits one signature request of `peer`, or says why not (429): a
    /// free slot at once, else a place in the caller's queue until a slot
    /// frees (first come, first served) or its `queue_timeout` passes. The
    /// permit is held until the request is answered. A peer no policy
    /// lists has no limits here: it is refused before it gets this far.
    /// `grants` are the peer's `[[callers]]` entries (`Peer::grants`),
    /// computed once per request by the caller.
    pub async fn admit(
        &self,
        peer: &Peer,
        grants: &[Grant<'_>],
    ) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let Some((bounds, rate)) = limits_for(grants) else {
            return Ok(None);
        };
        if let Some(rate) = rate {
            self.take_token(peer, rate)?;
        }
        let (slots, waiting) = {
            let mut map = self.callers.lock().unwrap_or_else(|p| p.into_inner());
            let caller = map.entry(peer.uid).or_insert_with(|| Caller::new(bounds));
            if caller.bounds != bounds {
                // The policy changed (reload): new requests use the new bounds.
                *caller = Caller::new(bounds);
            }
            (caller.slots.clone(), caller.waiting.clone())
        };
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return Ok(Some(slot));
        }
        let Bounds {
            concurrent,
            queued,
            wait,
        } = bounds;
        if waiting.fetch_add(1, Ordering::AcqRel) >= queued {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::too_many(format!(
                "caller uid {} already has {concurrent} signature requests in flight and {queued} queued (policy callers.max_concurrent, callers.max_queued)",
                peer.uid
            )));
        }
        let _place = Waiting(waiting);
        match tokio::time::timeout(wait, slots.acquire_owned()).await {
            Ok(Ok(slot)) => Ok(Some(slot)),
            // Never closed; a closed semaphore would be a bug, not a limit.
            Ok(Err(e)) => Err(ApiError::internal(e)),
            Err(_) => Err(ApiError::too_many(format!(
                "caller uid {} waited {}s in its queue for one of its {concurrent} slots (policy callers.max_concurrent, callers.queue_timeout)",
                peer.uid,
                wait.as_secs()
            ))),
        }
    }

    /// One token of `peer`'s bucket, or 429.
    fn take_token(&self, peer: &Peer, rate: u32) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let b = buckets.entry(peer.uid).or_insert(Bucket {
            tokens: f64::from(rate),
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * f64::from(rate);
        b.tokens = (b.tokens + refill).min(f64::from(rate));
        b.last = now;
        if b.tokens < 1.0 {
            return Err(ApiError::too_many(format!(
                "caller uid {} is over its rate of {rate} signatures per second (policy callers.max_per_second)",
                peer.uid
            )));
        }
        b.tokens -= 1.0;
        Ok(())
    }
}
