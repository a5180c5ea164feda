//! Per-caller limits on signature requests, so that one caller flooding the
//! socket cannot starve another: a bound on requests in flight per peer uid
//! (`[[callers]] max_concurrent`) and an optional rate
//! (`[[callers]] max_per_second`, a token bucket). Over a limit the answer
//! is 429 at once: nothing queues behind the signing pool on behalf of a
//! caller that already has its share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::peer::{Grant, Peer};

/// The limits in force for one peer: the most generous of its entries.
fn limits_for(grants: &[Grant<'_>]) -> Option<(u32, Option<u32>)> {
    let concurrent = grants.iter().map(|(_, c)| c.max_concurrent).max()?;
    // Unlimited if any entry is; else the highest rate.
    let rate = if grants.iter().any(|(_, c)| c.max_per_second.is_none()) {
        None
    } else {
        grants.iter().filter_map(|(_, c)| c.max_per_second).max()
    };
    Some((concurrent, rate))
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// State of every caller seen, by uid.
#[derive(Default)]
pub struct CallerLimits {
    inflight: Mutex<HashMap<u32, (u32, Arc<Semaphore>)>>,
    buckets: Mutex<HashMap<u32, Bucket>>,
}

impl CallerLimits {
    /// Admits one signature request of `peer`, or says why not (429). The
    /// permit is held until the request is answered. A peer no policy lists
    /// is admitted here and refused by the authorization that follows.
    /// `grants` are the peer's `[[callers]]` entries (`Peer::grants`),
    /// computed once per request by the caller.
    pub fn admit(
        &self,
        peer: &Peer,
        grants: &[Grant<'_>],
    ) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let Some((concurrent, rate)) = limits_for(grants) else {
            return Ok(None);
        };
        if let Some(rate) = rate {
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
        }
        let sem = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            let entry = map
                .entry(peer.uid)
                .or_insert_with(|| (concurrent, Arc::new(Semaphore::new(concurrent as usize))));
            if entry.0 != concurrent {
                // The policy changed (reload): new requests use the new bound.
                *entry = (concurrent, Arc::new(Semaphore::new(concurrent as usize)));
            }
            entry.1.clone()
        };
        sem.try_acquire_owned().map(Some).map_err(|_| {
            ApiError::too_many(format!(
                "caller uid {} already has {concurrent} signature requests in flight (policy callers.max_concurrent)",
                peer.uid
            ))
        })
    }
}
