//! Schedule arithmetic (DESIGN rule 7): when the successor of an active key
//! activates. The parsed [`Schedule`] is the policy's (`config::policy`);
//! what it means in time is the lifecycle's, here. Pure: `now` comes in as
//! data.

use chrono::{DateTime, TimeDelta, Utc};

use crate::clock::whole_seconds;
use crate::config::policy::Schedule;

impl Schedule {
    /// First activation time for the successor of a key activated at `current_activated_at`
    /// that is >= `earliest` (earliest is computed by the caller as now + publish_ahead).
    ///
    /// - Cron: the first cron point at or after `earliest`, evaluated in `tz`,
    ///   returned in UTC, whole seconds. Across DST: a wall-clock time that
    ///   does not exist (spring forward, e.g. 02:30 on 2026-03-08 in
    ///   America/New_York) runs at the first real instant after the gap
    ///   (03:00 EDT); a wall-clock time that happens twice (fall back) runs
    ///   once, at the earlier instant.
    /// - Every(d): `max(current_activated_at + d, earliest)`.
    ///
    /// The result is always a real instant `>= earliest`, rounded up to a
    /// whole second, and this never panics. Should croner fail to find a
    /// point (load refuses expressions that never match, so this can only
    /// happen at the edge of chrono's range), the answer is `earliest`:
    /// rotating early still honours `publish_ahead`.
    pub fn next_activation(
        &self,
        current_activated_at: DateTime<Utc>,
        earliest: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let earliest = ceil_second(earliest);
        match self {
            Schedule::Every(period) => {
                let due = current_activated_at
                    .checked_add_signed(period.to_chrono())
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                ceil_second(due.max(earliest))
            }
            Schedule::Cron { cron, tz, .. } => {
                match cron.find_next_occurrence(&earliest.with_timezone(tz), true) {
                    Ok(point) => ceil_second(point.with_timezone(&Utc)).max(earliest),
                    Err(_) => earliest,
                }
            }
        }
    }
}

/// Rounds up to a whole second (timestamps are stored as whole seconds).
fn ceil_second(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = whole_seconds(t);
    if floor == t {
        t
    } else {
        floor
            .checked_add_signed(TimeDelta::seconds(1))
            .unwrap_or(floor)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::{DateTime, TimeDelta, Utc};

    use crate::config::policy::{Policy, Schedule};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn parse(text: &str) -> Policy {
        Policy::from_toml(Path::new("policies/x.toml"), text).unwrap()
    }

    fn cron(expr: &str, tz: &str) -> Schedule {
        parse(&format!(
            "name = \"x\"\nrotate = \"{expr}\"\ntimezone = \"{tz}\"\n"
        ))
        .schedule
    }

    /// `rotate_every = "30d"`.
    fn every_30d() -> Schedule {
        parse("name = \"x\"\nrotate_every = \"30d\"\n").schedule
    }

    #[test]
    fn cron_next_activation_is_inclusive_of_earliest_and_whole_seconds() {
        let s = cron("0 0 3 1 * *", "UTC");
        let at = utc("2026-02-01T03:00:00Z");
        assert_eq!(s.next_activation(at, at), at);
        // Just after the point: the next month's point.
        let after = utc("2026-02-01T03:00:00.5Z");
        assert_eq!(s.next_activation(at, after), utc("2026-03-01T03:00:00Z"));
    }

    #[test]
    fn cron_is_evaluated_in_its_timezone() {
        let s = cron("0 0 3 1 * *", "America/New_York");
        // 03:00 EST on 2026-02-01 is 08:00 UTC.
        let next = s.next_activation(utc("2026-01-01T00:00:00Z"), utc("2026-01-05T00:00:00Z"));
        assert_eq!(next, utc("2026-02-01T08:00:00Z"));
        // In summer (EDT, UTC-4) it is 07:00 UTC.
        let next = s.next_activation(utc("2026-06-01T00:00:00Z"), utc("2026-06-05T00:00:00Z"));
        assert_eq!(next, utc("2026-07-01T07:00:00Z"));
    }

    #[test]
    fn cron_point_missing_on_spring_forward_day_runs_right_after_the_gap() {
        // 2026-03-08 02:00 EST jumps to 03:00 EDT: 02:30 does not exist.
        // croner schedules a fixed-time job that falls in the gap at the
        // first real instant after it: 03:00 EDT = 07:00 UTC.
        let s = cron("30 2 * * *", "America/New_York");
        let earliest = utc("2026-03-08T05:00:00Z"); // 00:00 EST
        let next = s.next_activation(earliest - TimeDelta::days(30), earliest);
        assert_eq!(next, utc("2026-03-08T07:00:00Z"));
        // The day after is back to normal: 02:30 EDT = 06:30 UTC.
        let next = s.next_activation(earliest, utc("2026-03-08T07:00:01Z"));
        assert_eq!(next, utc("2026-03-09T06:30:00Z"));
    }

    #[test]
    fn cron_point_repeated_on_fall_back_day_runs_once_at_the_earlier_instant() {
        // 2026-11-01 02:00 EDT falls back to 01:00 EST: 01:30 happens twice,
        // at 05:30 UTC (EDT) and 06:30 UTC (EST). A fixed-time job runs once.
        let s = cron("30 1 * * *", "America/New_York");
        let earliest = utc("2026-11-01T04:00:00Z"); // 00:00 EDT
        let next = s.next_activation(earliest - TimeDelta::days(30), earliest);
        assert_eq!(next, utc("2026-11-01T05:30:00Z"));
        // Past the first 01:30 the next point is the following day, 01:30 EST.
        let next = s.next_activation(earliest, utc("2026-11-01T05:30:01Z"));
        assert_eq!(next, utc("2026-11-02T06:30:00Z"));
    }

    #[test]
    fn cron_next_activation_is_never_before_earliest_around_dst() {
        let s = cron("*/20 * * * *", "America/New_York");
        let mut t = utc("2026-03-08T05:00:00Z");
        while t < utc("2026-03-08T09:00:00Z") {
            let next = s.next_activation(t, t);
            assert!(
                next >= t && next - t <= TimeDelta::minutes(20),
                "{t} -> {next}"
            );
            t += TimeDelta::minutes(7);
        }
        let mut t = utc("2026-11-01T04:00:00Z");
        while t < utc("2026-11-01T08:00:00Z") {
            let next = s.next_activation(t, t);
            assert!(
                next >= t && next - t <= TimeDelta::minutes(20),
                "{t} -> {next}"
            );
            t += TimeDelta::minutes(7);
        }
    }

    #[test]
    fn rotate_every_counts_from_the_current_activation() {
        let s = every_30d();
        let current = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            s.next_activation(current, utc("2026-01-03T00:00:00Z")),
            utc("2026-01-31T00:00:00Z")
        );
    }

    #[test]
    fn rotate_every_is_pushed_to_earliest_when_overdue() {
        let s = every_30d();
        let current = utc("2026-01-01T00:00:00Z");
        let earliest = utc("2026-02-10T00:00:00Z");
        assert_eq!(s.next_activation(current, earliest), earliest);
        // Exactly at the boundary both agree.
        let due = utc("2026-01-31T00:00:00Z");
        assert_eq!(s.next_activation(current, due), due);
        assert_eq!(
            s.next_activation(current, due + TimeDelta::seconds(1)),
            due + TimeDelta::seconds(1)
        );
    }
}
