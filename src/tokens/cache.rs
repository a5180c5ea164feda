//! The token cache of DESIGN §6: when to call a token endpoint, and which
//! cached token a caller may get.
//!
//! Owns: the cache key (set, client, token URL, sorted scopes), single
//! flight (one upstream request per key; the callers waiting on it all get
//! its outcome), refresh ahead of expiry, `min_ttl_s`, `Retry-After`, the
//! per-(client, token URL) rate cap, and forgetting a token on request.
//! Does not own: how a token is fetched (the caller passes a `fetch`
//! function: sign an assertion, call `upstream.rs`) or who may ask.
//!
//! Time comes from the injected clock, so tests drive expiry. Tokens are
//! kept as `Arc<Entry>` and never copied: one zeroized allocation each.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::token::{AccessToken, ScopeSet};
use super::upstream::{Grant, UpstreamError};
use crate::clock::Clock;

/// Above this many keys, a miss first drops entries that expired (callers
/// choose scope subsets, so keys are many in theory; the rate cap bounds
/// how fast they can grow).
const SWEEP_ABOVE: usize = 256;
/// Refresh ahead once less than this is left, or [`REFRESH_FRACTION`] of
/// the lifetime, whichever is more (DESIGN §6).
const REFRESH_AHEAD: TimeDelta = TimeDelta::seconds(60);
/// See [`REFRESH_AHEAD`]: 20 %.
const REFRESH_FRACTION: i64 = 5;

/// What a cached token is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The client's key set.
    pub set: String,
    pub client_id: String,
    /// Exactly as the caller gave it (and as the assertion's `aud`).
    pub token_url: String,
    pub scopes: ScopeSet,
}

/// A token as fetched: the grant and the key that signed its assertion.
#[derive(Debug)]
pub struct Fetched {
    pub grant: Grant,
    /// Of the assertion that obtained it.
    pub kid: String,
}

/// A cached token.
#[derive(Debug)]
pub struct Entry {
    pub token: AccessToken,
    /// The scopes granted (a subset of those asked for).
    pub scope: ScopeSet,
    pub kid: String,
    pub obtained_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Entry {
    /// Seconds left at `now` (negative once expired).
    pub fn left(&self, now: DateTime<Utc>) -> TimeDelta {
        self.expires_at - now
    }

    /// Whether `now` is past the refresh point: less than max(60 s, 20 %
    /// of the lifetime) left.
    fn due_for_refresh(&self, now: DateTime<Utc>) -> bool {
        let lifetime = self.expires_at - self.obtained_at;
        self.left(now) < REFRESH_AHEAD.max(lifetime / REFRESH_FRACTION as i32)
    }
}

/// Why getting a token failed. Display is safe to log and answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The token endpoint failed or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// No assertion could be signed (no active key, an internal error).
    #[error("{message}")]
    Assertion {
        /// The HTTP status to answer with.
        status: u16,
        /// The socket API error code.
        code: &'static str,
        message: String,
    },
}

/// Why [`TokenCache::get`] has no token to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The fetch (this caller's, or the one it waited for) failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The endpoint said `Retry-After`: no upstream call for this key
    /// until `until`, and no cached token has `min_ttl_s` left.
    #[error("the token endpoint asked to wait until {until} ({cause})")]
    BackingOff {
        until: DateTime<Utc>,
        cause: UpstreamError,
    },
    /// `token_requests_per_minute` calls were made to this token URL for
    /// this client in the last minute.
    #[error(
        "token_requests_per_minute ({per_minute}) reached for this client and token_url; retry in {}s",
        retry_after.as_secs()
    )]
    RateCapped {
        per_minute: u32,
        retry_after: Duration,
    },
    /// The endpoint's fresh token has less than `min_ttl_s` left.
    #[error("the token endpoint's token lives {expires_in}s, less than min_ttl_s = {min_ttl_s}")]
    TooShort { expires_in: u64, min_ttl_s: u64 },
}

/// What a caller gets.
#[derive(Debug, Clone)]
pub struct Served {
    pub entry: Arc<Entry>,
    /// True when it was in the cache before this request.
    pub cached: bool,
}

/// What a caller asks for, besides the key.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// Seconds the token must still be valid for.
    pub min_ttl_s: u64,
    /// The client's `token_requests_per_minute`.
    pub per_minute: u32,
}

/// What became of one upstream call, for audit and metrics.
#[derive(Debug)]
pub enum CallKind {
    /// A caller had no usable token and waited for this one.
    Miss,
    /// Ahead of expiry, in the background, while callers are served.
    Refresh,
}

#[derive(Default)]
struct SlotState {
    entry: Option<Arc<Entry>>,
    /// Counts finished fetches: a waiter that sees it move knows the
    /// outcome it waited for is in `last_error` or `entry`.
    generation: u64,
    last_error: Option<FetchError>,
    blocked: Option<(DateTime<Utc>, UpstreamError)>,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Held by the one fetch in flight for this key.
    flight: tokio::sync::Mutex<()>,
}

/// Times of upstream calls within the last minute, oldest first.
type CallTimes = VecDeque<DateTime<Utc>>;

/// The cache of one daemon (each replica keeps its own).
pub struct TokenCache {
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    /// Upstream call times per (client, token URL), the last minute's.
    calls: Mutex<HashMap<(String, String), CallTimes>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TokenCache {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        TokenCache {
            clock,
            slots: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if slots.len() > SWEEP_ABOVE && !slots.contains_key(key) {
            let now = self.clock.now();
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || lock(&s.state)
                        .entry
                        .as_ref()
                        .is_some_and(|e| e.expires_at > now)
            });
        }
        slots.entry(key.clone()).or_default().clone()
    }

    /// A token for `key` with at least `ask.min_ttl_s` left: the cached
    /// one, or one fetched with `fetch` (once for every caller waiting on
    /// this key). A cached token past its refresh point is served and
    /// refreshed in the background. `on_call` is told of every upstream
    /// call's outcome (audit, metrics), background ones included.
    pub async fn get<F, Fut, C>(
        self: &Arc<Self>,
        key: Key,
        ask: Ask,
        fetch: F,
        on_call: C,
    ) -> Result<Served, CacheError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Fetched, FetchError>> + Send + 'static,
        C: Fn(CallKind, &Result<Fetched, FetchError>) + Send + Sync + 'static,
    {
        let slot = self.slot(&key);
        let min_ttl = TimeDelta::seconds(ask.min_ttl_s as i64);
        let seen = {
            let now = self.clock.now();
            let st = lock(&slot.state);
            if let Some(entry) = st.entry.as_ref().filter(|e| e.left(now) >= min_ttl) {
                let entry = entry.clone();
                let blocked = st.blocked.as_ref().is_some_and(|(until, _)| *until > now);
                drop(st);
                if entry.due_for_refresh(now) && !blocked {
                    self.refresh_behind(key, slot.clone(), ask, fetch, on_call);
                }
                return Ok(Served {
                    entry,
                    cached: true,
                });
            }
            if let Some((until, cause)) = st.blocked.as_ref().filter(|(u, _)| *u > now) {
                return Err(CacheError::BackingOff {
                    until: *until,
                    cause: cause.clone(),
                });
            }
            st.generation
        };
        let _flight = slot.flight.lock().await;
        {
            let now = self.clock.now();
            let st = lock(&slot.state);
            if st.generation != seen {
                // Another caller's fetch finished while this one waited:
                // its outcome is this caller's too.
                if let Some(entry) = st.entry.as_ref().filter(|e| e.left(now) >= min_ttl) {
                    return Ok(Served {
                        entry: entry.clone(),
                        cached: false,
                    });
                }
                if let Some(e) = &st.last_error {
                    return Err(e.clone().into());
                }
            }
            if let Some((until, cause)) = st.blocked.as_ref().filter(|(u, _)| *u > now) {
                return Err(CacheError::BackingOff {
                    until: *until,
                    cause: cause.clone(),
                });
            }
        }
        self.take_call(&key, ask.per_minute)?;
        let result = fetch().await;
        on_call(CallKind::Miss, &result);
        let entry = self.settle(&slot, result)?;
        if entry.left(entry.obtained_at) < min_ttl {
            return Err(CacheError::TooShort {
                expires_in: entry.left(entry.obtained_at).num_seconds().max(0) as u64,
                min_ttl_s: ask.min_ttl_s,
            });
        }
        Ok(Served {
            entry,
            cached: false,
        })
    }

    /// Records a fetch's outcome in `slot`; a failure keeps the token
    /// cached before (still valid for callers that need less time).
    fn settle(
        &self,
        slot: &Slot,
        result: Result<Fetched, FetchError>,
    ) -> Result<Arc<Entry>, FetchError> {
        let now = self.clock.now();
        let mut st = lock(&slot.state);
        st.generation += 1;
        match result {
            Ok(fetched) => {
                let lifetime =
                    TimeDelta::seconds(fetched.grant.expires_in.min(i64::MAX as u64 / 2) as i64);
                let entry = Arc::new(Entry {
                    token: fetched.grant.access_token,
                    scope: fetched.grant.scope,
                    kid: fetched.kid,
                    obtained_at: now,
                    expires_at: now + lifetime,
                });
                st.entry = Some(entry.clone());
                st.last_error = None;
                st.blocked = None;
                Ok(entry)
            }
            Err(e) => {
                if let FetchError::Upstream(up) = &e
                    && let Some(wait) = up.retry_after()
                {
                    let until = now + TimeDelta::seconds(wait.as_secs() as i64);
                    st.blocked = Some((until, up.clone()));
                }
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Refreshes `key` in the background unless a fetch is already in
    /// flight or the rate cap says no.
    fn refresh_behind<F, Fut, C>(
        self: &Arc<Self>,
        key: Key,
        slot: Arc<Slot>,
        ask: Ask,
        fetch: F,
        on_call: C,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Fetched, FetchError>> + Send + 'static,
        C: Fn(CallKind, &Result<Fetched, FetchError>) + Send + Sync + 'static,
    {
        // A fetch in flight will settle the key: no task needed.
        if slot.flight.try_lock().is_err() {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            let Ok(_flight) = slot.flight.try_lock() else {
                return;
            };
            let now = cache.clock.now();
            let still_due = lock(&slot.state)
                .entry
                .as_ref()
                .is_none_or(|e| e.due_for_refresh(now));
            if !still_due || cache.take_call(&key, ask.per_minute).is_err() {
                return;
            }
            let result = fetch().await;
            on_call(CallKind::Refresh, &result);
            let _ = cache.settle(&slot, result);
        });
    }

    /// Counts one upstream call against the rate cap of (client, token
    /// URL), or says when the next one is allowed.
    fn take_call(&self, key: &Key, per_minute: u32) -> Result<(), CacheError> {
        let now = self.clock.now();
        let minute = TimeDelta::seconds(60);
        let mut calls = lock(&self.calls);
        let window = calls
            .entry((key.client_id.clone(), key.token_url.clone()))
            .or_default();
        while window.front().is_some_and(|t| *t + minute <= now) {
            window.pop_front();
        }
        if window.len() >= per_minute as usize {
            let oldest = window.front().copied().unwrap_or(now);
            let wait = (oldest + minute - now).num_seconds().max(1) as u64;
            return Err(CacheError::RateCapped {
                per_minute,
                retry_after: Duration::from_secs(wait),
            });
        }
        window.push_back(now);
        Ok(())
    }

    /// Forgets the token cached for `key` (a resource server refused it);
    /// the next request fetches a new one. Whether there was one.
    pub fn forget(&self, key: &Key) -> bool {
        let slot = lock(&self.slots).get(key).cloned();
        slot.is_some_and(|s| lock(&s.state).entry.take().is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::clock::ManualClock;

    fn key(scopes: &str) -> Key {
        Key {
            set: "default".into(),
            client_id: "app".into(),
            token_url: "https://ehr.example.com/token".into(),
            scopes: ScopeSet::parse(scopes),
        }
    }

    const ASK: Ask = Ask {
        min_ttl_s: 10,
        per_minute: 50,
    };

    /// A token endpoint in memory: counts calls and answers with what
    /// `answer` says for the n-th call (0-based).
    #[derive(Clone)]
    struct Endpoint {
        calls: Arc<AtomicUsize>,
        answer: Arc<dyn Fn(usize) -> Result<u64, UpstreamError> + Send + Sync>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl Endpoint {
        fn new(
            answer: impl Fn(usize) -> Result<u64, UpstreamError> + Send + Sync + 'static,
        ) -> Self {
            Endpoint {
                calls: Arc::default(),
                answer: Arc::new(answer),
                gate: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        async fn get(
            &self,
            cache: &Arc<TokenCache>,
            key: Key,
            ask: Ask,
        ) -> Result<Served, CacheError> {
            let me = self.clone();
            cache
                .get(
                    key,
                    ask,
                    move || {
                        let me = me.clone();
                        async move {
                            let n = me.calls.fetch_add(1, Ordering::SeqCst);
                            let _pass = me.gate.acquire().await.unwrap();
                            let expires_in = (me.answer)(n)?;
                            Ok(Fetched {
                                grant: Grant {
                                    access_token: AccessToken::new(format!("token-{n}")),
                                    expires_in,
                                    scope: ScopeSet::parse("a"),
                                },
                                kid: "k1".into(),
                            })
                        }
                    },
                    |_, _| {},
                )
                .await
        }
    }

    fn setup() -> (Arc<ManualClock>, Arc<TokenCache>) {
        let clock = Arc::new(ManualClock::new(
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .to_utc(),
        ));
        let cache = Arc::new(TokenCache::new(clock.clone()));
        (clock, cache)
    }

    fn token(s: &Result<Served, CacheError>) -> (&str, bool) {
        let s = s.as_ref().unwrap();
        (s.entry.token.expose(), s.cached)
    }

    fn refused(status: u16, retry_after: Option<u64>) -> UpstreamError {
        UpstreamError::Refused {
            status,
            oauth_error: None,
            oauth_error_description: None,
            retry_after: retry_after.map(Duration::from_secs),
            why: "x".into(),
        }
    }

    /// Lets spawned refresh tasks run to completion.
    async fn settle_background(ep: &Endpoint, calls: usize) {
        for _ in 0..1000 {
            if ep.calls() >= calls {
                break;
            }
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_miss_fetches_and_the_next_request_hits() {
        let (_, cache) = setup();
        let ep = Endpoint::new(|_| Ok(3600));
        assert_eq!(
            token(&ep.get(&cache, key("a"), ASK).await),
            ("token-0", false)
        );
        assert_eq!(
            token(&ep.get(&cache, key("a"), ASK).await),
            ("token-0", true)
        );
        // Another scope set is another key.
        assert_eq!(
            token(&ep.get(&cache, key("a b"), ASK).await),
            ("token-1", false)
        );
        assert_eq!(ep.calls(), 2);
    }

    #[tokio::test]
    async fn a_token_asked_for_near_its_end_is_served_and_refreshed_behind() {
        let (clock, cache) = setup();
        let ep = Endpoint::new(|_| Ok(1000));
        ep.get(&cache, key("a"), ASK).await.unwrap();
        // 20 % of 1000 s is 200 s: not due with 201 s left.
        clock.advance(TimeDelta::seconds(799));
        assert_eq!(
            token(&ep.get(&cache, key("a"), ASK).await),
            ("token-0", true)
        );
        settle_background(&ep, 2).await;
        assert_eq!(ep.calls(), 1);
        clock.advance(TimeDelta::seconds(2));
        assert_eq!(
            token(&ep.get(&cache, key("a"), ASK).await),
            ("token-0", true)
        );
        settle_background(&ep, 2).await;
        assert_eq!(ep.calls(), 2);
        assert_eq!(
            token(&ep.get(&cache, key("a"), ASK).await),
            ("token-1", true)
        );
    }

    #[tokio::test]
    async fn a_short_token_is_refreshed_60_s_before_its_end() {
        let (clock, cache) = setup();
        let ep = Endpoint::new(|_| Ok(100));
        ep.get(&cache, key("a"), ASK).await.unwrap();
        clock.advance(TimeDelta::seconds(39));
        ep.get(&cache, key("a"), ASK).await.unwrap();
        settle_background(&ep, 2).await;
        assert_eq!(ep.calls(), 1, "61 s left: not yet");
        clock.advance(TimeDelta::seconds(2));
        ep.get(&cache, key("a"), ASK).await.unwrap();
        settle_background(&ep, 2).await;
        assert_eq!(ep.calls(), 2);
    }

    #[tokio::test]
    async fn a_token_with_less_than_min_ttl_left_is_never_handed_out() {
        let (clock, cache) = setup();
        let ep = Endpoint::new(|_| Ok(100));
        ep.get(&cache, key("a"), ASK).await.unwrap();
        clock.advance(TimeDelta::seconds(50));
        let ask = Ask {
            min_ttl_s: 51,
            ..ASK
        };
        assert_eq!(
            token(&ep.get(&cache, key("a"), ask).await),
            ("token-1", false)
        );
        let ask = Ask {
            min_ttl_s: 101,
            ..ASK
        };
        assert_eq!(
            ep.get(&cache, key("a"), ask).await.unwrap_err(),
            CacheError::TooShort {
                expires_in: 100,
                min_ttl_s: 101
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_first_requests_make_one_upstream_call() {
        let (_, cache) = setup();
        for answer in [Ok(3600), Err(refused(400, None))] {
            let ep = Endpoint::new(move |_| answer.clone());
            let hold = ep.gate.acquire_many(1 << 20).await.unwrap();
            let entered = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..1000)
                .map(|_| {
                    let (ep, cache, entered) = (ep.clone(), cache.clone(), entered.clone());
                    tokio::spawn(async move {
                        entered.fetch_add(1, Ordering::SeqCst);
                        ep.get(&cache, key("x"), ASK).await
                    })
                })
                .collect();
            // Every request must be waiting before the one call answers (a
            // request that comes after a failure rightly tries again).
            while ep.calls() == 0 || entered.load(Ordering::SeqCst) < 1000 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(hold);
            let mut outcomes = Vec::new();
            for t in tasks {
                outcomes.push(t.await.unwrap().map(|s| s.entry.token.expose().to_owned()));
            }
            assert_eq!(ep.calls(), 1);
            assert!(
                outcomes.windows(2).all(|w| w[0] == w[1]),
                "every waiter gets the one outcome"
            );
            cache.forget(&key("x"));
        }
    }

    #[tokio::test]
    async fn retry_after_stops_calls_for_the_key_while_a_valid_token_is_served() {
        let (clock, cache) = setup();
        let ep = Endpoint::new(|n| {
            if n == 1 {
                Err(refused(429, Some(30)))
            } else {
                Ok(100)
            }
        });
        ep.get(&cache, key("a"), ASK).await.unwrap();
        clock.advance(TimeDelta::seconds(50));
        // Due for refresh: served, and the refresh gets the 429.
        assert_eq!(
            token(&ep.get(&cache, key("a"), ASK).await),
            ("token-0", true)
        );
        settle_background(&ep, 2).await;
        assert_eq!(ep.calls(), 2);
        for _ in 0..5 {
            assert_eq!(
                token(&ep.get(&cache, key("a"), ASK).await),
                ("token-0", true)
            );
            settle_background(&ep, 3).await;
        }
        // A caller that needs more than the cached token has waits too.
        let long = Ask {
            min_ttl_s: 60,
            ..ASK
        };
        assert!(matches!(
            ep.get(&cache, key("a"), long).await,
            Err(CacheError::BackingOff { .. })
        ));
        assert_eq!(ep.calls(), 2, "no call while Retry-After runs");
        clock.advance(TimeDelta::seconds(30));
        assert_eq!(
            token(&ep.get(&cache, key("a"), long).await),
            ("token-2", false)
        );
    }

    #[tokio::test]
    async fn the_rate_cap_counts_calls_per_client_and_token_url() {
        let (clock, cache) = setup();
        let ep = Endpoint::new(|_| Ok(3600));
        let ask = Ask {
            per_minute: 2,
            ..ASK
        };
        ep.get(&cache, key("a"), ask).await.unwrap();
        clock.advance(TimeDelta::seconds(10));
        ep.get(&cache, key("b"), ask).await.unwrap();
        assert_eq!(
            ep.get(&cache, key("c"), ask).await.unwrap_err(),
            CacheError::RateCapped {
                per_minute: 2,
                retry_after: Duration::from_secs(50)
            }
        );
        assert_eq!(ep.calls(), 2);
        // Cached tokens are still served.
        assert!(ep.get(&cache, key("a"), ask).await.is_ok());
        clock.advance(TimeDelta::seconds(50));
        assert!(ep.get(&cache, key("c"), ask).await.is_ok());
        assert_eq!(ep.calls(), 3);
    }

    #[tokio::test]
    async fn a_forgotten_token_is_fetched_again() {
        let (_, cache) = setup();
        let ep = Endpoint::new(|_| Ok(3600));
        ep.get(&cache, key("a"), ASK).await.unwrap();
        assert!(cache.forget(&key("a")));
        assert!(!cache.forget(&key("a")));
        assert_eq!(
            token(&ep.get(&cache, key("a"), ASK).await),
            ("token-1", false)
        );
    }
}
