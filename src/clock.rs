//! The injected clock. Only `SystemClock` reads the wall clock; lifecycle
//! decisions take `now` as data and tests move a `ManualClock`.

use std::sync::Mutex;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// A source of the current time, truncated to whole seconds (the unit every
/// stored timestamp uses).
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        whole_seconds(Utc::now())
    }
}

/// A clock that only moves when told to: for tests and `jwksd simulate`.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(whole_seconds(start)))
    }

    /// Moves the clock to `to` (which may be earlier, to test clock trouble).
    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = whole_seconds(to);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = whole_seconds(*t + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops sub-second precision: timestamps are stored as whole seconds, so a
/// decision made in memory must see what a restart will read back.
pub fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::seconds(1)).unwrap_or(t)
}

/// How far the wall clock may drift from monotonic time between two reads
/// before it counts as a jump.
const JUMP_TOLERANCE: chrono::Duration = chrono::Duration::seconds(2);
/// How long a jumped wall clock must stay consistent before it is believed
/// (an operator or NTP correcting a wrong clock, not a glitch).
const ACCEPT_JUMP_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

type WallSource = Box<dyn Fn() -> DateTime<Utc> + Send + Sync>;
type MonoSource = Box<dyn Fn() -> std::time::Duration + Send + Sync>;

/// The daemon's clock: wall time, guarded by the monotonic clock.
///
/// Key transitions and assertion `exp` come from wall time, so a wall clock
/// that jumps by hours (a VM resumed, a bad NTP server, an operator typo)
/// would activate or retire keys early and mint assertions every verifier
/// rejects. This clock follows the wall clock while it moves with the
/// monotonic clock; after a jump it keeps counting monotonic time from the
/// last trusted reading (so a backward jump does not move time back), and
/// believes the new wall time, forwards or backwards, only once it has
/// stayed consistent for ten minutes. Every jump is logged.
pub struct GuardedClock {
    wall: WallSource,
    mono: MonoSource,
    state: Mutex<GuardState>,
}

struct GuardState {
    anchor_wall: DateTime<Utc>,
    anchor_mono: std::time::Duration,
    /// A jump seen at this monotonic time, with its offset from trusted time.
    suspect: Option<(std::time::Duration, chrono::Duration)>,
}

impl GuardedClock {
    /// Guards the system clocks. The monotonic side is CLOCK_BOOTTIME, which
    /// (unlike CLOCK_MONOTONIC) keeps counting while the machine is
    /// suspended, so the wall clock's catch-up after a resume is followed,
    /// not taken for a jump.
    pub fn system() -> Self {
        fn boottime() -> std::time::Duration {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
                .map(std::time::Duration::from)
                .unwrap_or_default()
        }
        Self::with_sources(Box::new(Utc::now), Box::new(boottime))
    }

    /// Guards the given sources (tests drive both by hand).
    pub fn with_sources(wall: WallSource, mono: MonoSource) -> Self {
        let state = GuardState {
            anchor_wall: wall(),
            anchor_mono: mono(),
            suspect: None,
        };
        GuardedClock {
            wall,
            mono,
            state: Mutex::new(state),
        }
    }

    fn read(&self) -> DateTime<Utc> {
        let (w, m) = ((self.wall)(), (self.mono)());
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = chrono::Duration::from_std(m.saturating_sub(s.anchor_mono))
            .unwrap_or(chrono::Duration::zero());
        let trusted = s.anchor_wall + elapsed;
        let offset = w - trusted;
        if offset.abs() <= JUMP_TOLERANCE {
            s.anchor_wall = w.max(s.anchor_wall);
            s.anchor_mono = m;
            s.suspect = None;
            return s.anchor_wall;
        }
        match s.suspect {
            Some((since, seen)) if (offset - seen).abs() <= JUMP_TOLERANCE => {
                if m.saturating_sub(since) >= ACCEPT_JUMP_AFTER {
                    tracing::warn!(
                        offset_s = offset.num_seconds(),
                        "wall clock stable after its jump for 10 minutes: following it again"
                    );
                    s.anchor_wall = w;
                    s.anchor_mono = m;
                    s.suspect = None;
                    return w;
                }
            }
            _ => {
                tracing::warn!(
                    offset_s = offset.num_seconds(),
                    "wall clock jumped; keeping monotonic time until the new wall time has been stable for 10 minutes"
                );
                s.suspect = Some((m, offset));
            }
        }
        trusted
    }
}

impl Clock for GuardedClock {
    fn now(&self) -> DateTime<Utc> {
        whole_seconds(self.read())
    }
}

#[cfg(test)]
mod guarded_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    /// A wall clock and a monotonic clock moved by hand, in seconds.
    fn clocks() -> (GuardedClock, Arc<AtomicI64>, Arc<AtomicI64>) {
        let wall = Arc::new(AtomicI64::new(1_800_000_000));
        let mono = Arc::new(AtomicI64::new(0));
        let (w, m) = (wall.clone(), mono.clone());
        let clock = GuardedClock::with_sources(
            Box::new(move || DateTime::from_timestamp(w.load(Ordering::SeqCst), 0).unwrap()),
            Box::new(move || std::time::Duration::from_secs(m.load(Ordering::SeqCst) as u64)),
        );
        (clock, wall, mono)
    }

    fn tick(wall: &AtomicI64, mono: &AtomicI64, secs: i64) {
        wall.fetch_add(secs, Ordering::SeqCst);
        mono.fetch_add(secs, Ordering::SeqCst);
    }

    #[test]
    fn follows_the_wall_clock_while_it_moves_with_monotonic_time() {
        let (c, wall, mono) = clocks();
        tick(&wall, &mono, 100);
        assert_eq!(c.now().timestamp(), 1_800_000_100);
        // Small NTP slews within the tolerance are followed.
        wall.fetch_add(1, Ordering::SeqCst);
        assert_eq!(c.now().timestamp(), 1_800_000_101);
    }

    #[test]
    fn a_forward_jump_of_hours_is_not_believed() {
        let (c, wall, mono) = clocks();
        wall.fetch_add(6 * 3600, Ordering::SeqCst);
        tick(&wall, &mono, 10);
        assert_eq!(
            c.now().timestamp(),
            1_800_000_010,
            "monotonic time, not the jump"
        );
        tick(&wall, &mono, 60);
        assert_eq!(c.now().timestamp(), 1_800_000_070);
    }

    #[test]
    fn a_backward_jump_never_moves_time_back() {
        let (c, wall, mono) = clocks();
        tick(&wall, &mono, 50);
        assert_eq!(c.now().timestamp(), 1_800_000_050);
        wall.fetch_sub(3 * 3600, Ordering::SeqCst);
        tick(&wall, &mono, 5);
        assert_eq!(c.now().timestamp(), 1_800_000_055);
    }

    #[test]
    fn a_jump_that_stays_for_ten_minutes_is_believed_from_then_on() {
        let (c, wall, mono) = clocks();
        wall.fetch_add(3600, Ordering::SeqCst);
        assert_eq!(c.now().timestamp(), 1_800_000_000);
        tick(&wall, &mono, 599);
        assert_eq!(c.now().timestamp(), 1_800_000_599, "1 s before acceptance");
        tick(&wall, &mono, 1);
        assert_eq!(c.now().timestamp(), 1_800_003_600 + 600, "at acceptance");
        tick(&wall, &mono, 1);
        assert_eq!(c.now().timestamp(), 1_800_003_600 + 601, "after");
    }

    #[test]
    fn a_jump_that_keeps_moving_is_never_believed() {
        let (c, wall, mono) = clocks();
        for i in 1..=20 {
            // A clock that wanders by minutes every half minute.
            wall.fetch_add(if i % 2 == 0 { 300 } else { -200 }, Ordering::SeqCst);
            tick(&wall, &mono, 30);
            assert_eq!(c.now().timestamp(), 1_800_000_000 + 30 * i);
        }
    }
}
