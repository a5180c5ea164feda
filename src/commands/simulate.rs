//! `jwksd simulate`: prints a policy's timeline (text or JSON lines) from a
//! [`Simulation`] on a simulated clock, and with `--svg` draws it.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::cli::SimulateArgs;
use crate::clock::Clock;
use crate::config::policy::Policy;
use crate::lifecycle::simulate::{Simulation, lines_of, text_line};
use crate::timeline::{Timeline, svg};

/// `jwksd simulate`: prints the timeline (text or JSON lines).
pub async fn run(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let policy = Policy::load_file(&args.policy)?;
    let start = match &args.start {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .with_context(|| format!("--start {s:?}: not an RFC 3339 time"))?
            .with_timezone(&Utc),
        None => crate::clock::SystemClock.now(),
    };
    let end = start + chrono::Duration::days(i64::from(args.days));
    if !args.json {
        println!(
            "simulating set {} ({}) from {} for {} days",
            policy.name,
            policy.schedule,
            start.to_rfc3339_opts(SecondsFormat::Secs, true),
            args.days
        );
    }
    let sim = Simulation::new(policy.clone(), start).await?;
    let json = args.json;
    let mut failed: Option<anyhow::Error> = None;
    sim.run_until(end, |event| {
        if json {
            for line in lines_of(event) {
                match serde_json::to_string(&line) {
                    Ok(s) => println!("{s}"),
                    Err(e) => failed = Some(e.into()),
                }
            }
        } else {
            println!("{}", text_line(event));
        }
    })
    .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(path) = &args.svg {
        // The picture of this very run: the keys as the simulation left
        // them carry every transition's time.
        let keys = sim.keys().await?;
        let timeline = Timeline::build(&keys, &[&policy], start, end, None);
        let title = format!(
            "jwksd simulate: set {} ({}), {} days from {}",
            policy.name,
            policy.schedule,
            args.days,
            start.format("%Y-%m-%d %H:%M UTC")
        );
        std::fs::write(path, svg::render(&timeline, &title))
            .with_context(|| format!("--svg {}: cannot write", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
