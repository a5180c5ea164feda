//! Draws a [`Timeline`] as SVG: a row per kid, grouped by set and alg, a
//! bar per phase, a dated axis, the schedule's points and emergencies as
//! marks, a legend, and a "now" line for a live picture.
//!
//! Written by hand rather than with `plotters`: the picture is rectangles,
//! lines and text on one linear time axis, and its tests check each bar to
//! the pixel against the lifecycle's events. Here the mapping from time to
//! x is one function that the SVG declares (`data-*` on the root), where a
//! charting crate would place things through its own margins and label
//! layout, and would add a dependency tree to a daemon's build for ~200
//! lines of output.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Duration, SecondsFormat, TimeZone, Utc};

use super::spans::{Phase, Timeline};

/// Left edge of the plot; kids are labelled to its left.
pub const PLOT_X: f64 = 250.0;
/// Width of the plot.
pub const PLOT_WIDTH: f64 = 1000.0;
const ROW_HEIGHT: f64 = 18.0;
const BAR_HEIGHT: f64 = 12.0;
const GROUP_GAP: f64 = 24.0;
const TOP: f64 = 56.0;
const LEGEND_HEIGHT: f64 = 56.0;
const WIDTH: f64 = PLOT_X + PLOT_WIDTH + 30.0;

/// Colours by phase; a planned bar is the same colour, lighter and dashed.
const STYLE: &str = "\
text{font-family:sans-serif;font-size:12px;fill:#222}\
.title{font-size:15px;font-weight:bold}\
.group{font-weight:bold}\
.kid{font-family:monospace;font-size:11px}\
.tick{stroke:#ccc;stroke-width:1}\
.pending{fill:#6baed6}\
.active{fill:#31a354}\
.retiring{fill:#fd8d3c}\
.planned{fill-opacity:0.4;stroke:#555;stroke-dasharray:3 2}\
.schedule{stroke:#756bb1;stroke-width:1;stroke-dasharray:2 3}\
.emergency{stroke:#de2d26;stroke-width:2}\
.revoked{stroke:#000;stroke-width:2}\
.now{stroke:#de2d26;stroke-width:1.5;stroke-dasharray:6 3}";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Text and attribute values: kids and set names are plain, but the
/// escaping costs nothing and keeps the file XML whatever a name holds.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The x of instant `t`: linear over the window, two decimals.
pub fn x_of(t: DateTime<Utc>, start: DateTime<Utc>, end: DateTime<Utc>) -> f64 {
    let total = (end - start).num_seconds().max(1) as f64;
    let x = PLOT_X + (t - start).num_seconds() as f64 * PLOT_WIDTH / total;
    (x * 100.0).round() / 100.0
}

/// The axis ticks of a window: month starts over long windows, days or
/// hours over short ones, about 4 to 24 of them.
fn ticks(start: DateTime<Utc>, end: DateTime<Utc>) -> (Vec<DateTime<Utc>>, &'static str) {
    let length = end - start;
    let first_day = Utc
        .with_ymd_and_hms(start.year(), start.month(), start.day(), 0, 0, 0)
        .single()
        .unwrap_or(start);
    let mut out = Vec::new();
    if length > Duration::days(120) {
        // About a tick a month over a year, fewer over longer windows.
        let months = (length.num_days() / 30 / 12).max(1) as u32;
        let mut at = Utc
            .with_ymd_and_hms(start.year(), start.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(start);
        while at <= end {
            if at >= start {
                out.push(at);
            }
            at = at
                .checked_add_months(chrono::Months::new(months))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        }
        return (out, "%Y-%m-%d");
    }
    let (step, format) = if length > Duration::days(14) {
        (Duration::days((length.num_days() / 12).max(1)), "%Y-%m-%d")
    } else if length > Duration::days(2) {
        (Duration::days(1), "%m-%d")
    } else {
        (
            Duration::hours((length.num_hours() / 8).max(1)),
            "%m-%d %H:%M",
        )
    };
    let mut at = first_day;
    while at <= end {
        if at >= start {
            out.push(at);
        }
        at += step;
    }
    (out, format)
}

/// The SVG document of `timeline`, titled `title`.
pub fn render(timeline: &Timeline, title: &str) -> String {
    let (start, end) = (timeline.start, timeline.end);
    let x = |t| x_of(t, start, end);
    let rows: usize = timeline.groups.iter().map(|g| g.kids.len()).sum();
    let plot_bottom =
        TOP + timeline.groups.len() as f64 * GROUP_GAP + rows as f64 * ROW_HEIGHT + 8.0;
    let height = plot_bottom + LEGEND_HEIGHT;
    let mut s = String::with_capacity(4096 + rows * 400);
    // `write!` into a String cannot fail.
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" data-start="{}" data-end="{}" data-plot-x="{PLOT_X}" data-plot-width="{PLOT_WIDTH}"><title>{}</title><style>{STYLE}</style><rect width="100%" height="100%" fill="#fff"/><text class="title" x="10" y="20">{}</text>"##,
        rfc3339(start),
        rfc3339(end),
        escape(title),
        escape(title),
    );
    // Axis: a vertical line and a date per tick.
    let (ticks, format) = ticks(start, end);
    s.push_str(r#"<g id="axis">"#);
    for t in ticks {
        let _ = write!(
            s,
            r#"<line class="tick" data-at="{}" x1="{x}" y1="{y1}" x2="{x}" y2="{plot_bottom}"/><text class="tick-label" x="{x}" y="{ty}" text-anchor="middle">{}</text>"#,
            rfc3339(t),
            t.format(format),
            x = x(t),
            y1 = TOP - 12.0,
            ty = TOP - 16.0,
        );
    }
    s.push_str("</g>");
    let mut y = TOP;
    for group in &timeline.groups {
        let _ = write!(
            s,
            r#"<g class="set" data-set="{set}" data-alg="{alg}"><text class="group" x="10" y="{gy}">{set} {alg}</text>"#,
            set = escape(group.set.as_str()),
            alg = group.alg,
            gy = y + 16.0,
        );
        let group_top = y + GROUP_GAP - 4.0;
        y += GROUP_GAP;
        for kid in &group.kids {
            let _ = write!(
                s,
                r#"<text class="kid" x="14" y="{}">{}</text>"#,
                y + BAR_HEIGHT - 1.0,
                escape(kid.as_str())
            );
            for bar in group.bars.iter().filter(|b| &b.kid == kid) {
                let (x0, x1) = (x(bar.from), x(bar.to));
                let planned = if bar.planned { " planned" } else { "" };
                let _ = write!(
                    s,
                    r#"<rect class="span {phase}{planned}" data-kid="{kid}" data-state="{phase}" data-from="{}" data-to="{}" x="{x0}" y="{}" width="{w:.2}" height="{BAR_HEIGHT}"><title>{kid} {phase}{planned}: {} to {}</title></rect>"#,
                    rfc3339(bar.from),
                    rfc3339(bar.to),
                    y + 1.0,
                    rfc3339(bar.from),
                    rfc3339(bar.to),
                    phase = bar.phase.as_str(),
                    kid = escape(kid.as_str()),
                    w = x1 - x0,
                );
            }
            y += ROW_HEIGHT;
        }
        for mark in &group.marks {
            let kid = mark
                .kid
                .as_ref()
                .map(|k| format!(r#" data-kid="{}""#, escape(k.as_str())))
                .unwrap_or_default();
            let _ = write!(
                s,
                r#"<line class="mark {kind}" data-at="{at}"{kid} x1="{mx}" y1="{group_top}" x2="{mx}" y2="{y}"><title>{kind} {at}</title></line>"#,
                kind = mark.kind.as_str(),
                at = rfc3339(mark.at),
                mx = x(mark.at),
            );
        }
        s.push_str("</g>");
    }
    if let Some(now) = timeline.now.filter(|n| *n >= start && *n <= end) {
        let _ = write!(
            s,
            r##"<g id="now"><line class="now" data-at="{at}" x1="{nx}" y1="{y1}" x2="{nx}" y2="{plot_bottom}"/><text x="{nx}" y="{ty}" text-anchor="middle" fill="#de2d26">now</text></g>"##,
            at = rfc3339(now),
            nx = x(now),
            y1 = TOP - 12.0,
            ty = plot_bottom + 12.0,
        );
    }
    legend(&mut s, plot_bottom + 24.0);
    s.push_str("</svg>\n");
    s
}

/// What the colours and lines mean.
fn legend(s: &mut String, y: f64) {
    s.push_str(r#"<g id="legend">"#);
    let mut x = 10.0;
    for phase in [Phase::Pending, Phase::Active, Phase::Retiring] {
        let meaning = match phase {
            Phase::Pending => "pending: published, not signing",
            Phase::Active => "active: signs",
            Phase::Retiring => "retiring: published, private half destroyed",
        };
        let _ = write!(
            s,
            r#"<rect class="{}" x="{x}" y="{}" width="14" height="{BAR_HEIGHT}"/><text x="{}" y="{}">{meaning}</text>"#,
            phase.as_str(),
            y - 10.0,
            x + 18.0,
            y,
        );
        x += 18.0 + meaning.len() as f64 * 6.5 + 16.0;
    }
    let y = y + 20.0;
    let mut x = 10.0;
    for (class, meaning) in [
        ("planned", "lighter, dashed: planned"),
        ("schedule", "schedule point"),
        ("emergency", "signed at once (rotate --now, revoke)"),
        ("revoked", "revoked"),
    ] {
        if class == "planned" {
            let _ = write!(
                s,
                r#"<rect class="active planned" x="{x}" y="{}" width="14" height="{BAR_HEIGHT}"/>"#,
                y - 10.0
            );
        } else {
            let _ = write!(
                s,
                r#"<line class="{class}" x1="{}" y1="{}" x2="{}" y2="{}"/>"#,
                x + 7.0,
                y - 11.0,
                x + 7.0,
                y + 2.0
            );
        }
        let _ = write!(s, r#"<text x="{}" y="{y}">{meaning}</text>"#, x + 18.0);
        x += 18.0 + meaning.len() as f64 * 6.5 + 16.0;
    }
    s.push_str("</g>");
}
