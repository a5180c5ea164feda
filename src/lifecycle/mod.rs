//! The key lifecycle (DESIGN §1), in one place:
//!
//! - [`model`]: the data (a stored key, a change, what applying it did, the
//!   events it emits);
//! - [`plan`]: what must happen now, as a pure function of a policy, the
//!   keys and `now`;
//! - [`schedule`]: when a successor activates (cron or `rotate_every`);
//! - [`executor`]: the one path every change takes (ticks, `rotate`,
//!   `rotate --now`, `revoke`, a reschedule after a reload), emitting events;
//! - [`handover`]: what an emergency hand-over means for caching verifiers;
//! - [`orphans`]: token objects that no key may hold any more;
//! - [`simulate`]: the same code on a simulated clock (`jwksd simulate`).

pub mod executor;
pub mod handover;
pub mod model;
pub mod orphans;
pub mod plan;
pub mod schedule;
pub mod simulate;

pub use executor::{Executor, LifecycleError, RevokeOutcome, RotateOutcome};
pub use model::{Applied, Change, Event, EventKind, StoredKey};
pub use plan::{GenerateReason, NewKey, Step, earliest_activation, next_due, plan};

#[cfg(test)]
mod tests;
