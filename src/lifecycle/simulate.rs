//! `jwksd simulate`: the real executor, lifecycle and store code (an
//! in-memory SQLite database) on a simulated clock, jumping from one due
//! transition to the next. Keys are public-only stand-ins: a simulated year
//! needs kids and JWKS entries, never a signature, and real RSA-4096
//! generation would make a long simulation take minutes.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::executor::Executor;
use super::model::{Event, StoredKey};
use crate::clock::{Clock, ManualClock};
use crate::config::live::LivePolicies;
use crate::config::policy::{Policies, Policy};
use crate::keys::backend::{KeyBackends, MadeKey, PrivateHalf};
use crate::keys::seal::MasterKey;
use crate::keys::secret::SecretBytes;
use crate::keys::{KeyError, PublicKey};
use crate::store::{SqliteStore, Store};
use crate::types::{Alg, KeyState};

/// Random public keys with no usable private half.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimulatedKeys;

/// Every policy's keys are made here, whatever its `backend` says: a
/// simulation needs no token, and its timeline is the same for every
/// backend (DESIGN §5).
impl KeyBackends for SimulatedKeys {
    fn generate(
        &self,
        _backend: &str,
        alg: Alg,
        rsa_bits: u32,
        kid_for: &dyn Fn(&PublicKey) -> crate::types::Kid,
    ) -> Result<MadeKey, KeyError> {
        let public = match alg {
            Alg::Rs384 => {
                let mut n = vec![0u8; (rsa_bits / 8) as usize];
                crate::keys::fill_random(&mut n)?;
                n[0] |= 0x80;
                PublicKey::Rsa {
                    n,
                    e: vec![1, 0, 1],
                }
            }
            Alg::Es384 => {
                let mut x = [0u8; 48];
                let mut y = [0u8; 48];
                crate::keys::fill_random(&mut x)?;
                crate::keys::fill_random(&mut y)?;
                PublicKey::Ec384 { x, y }
            }
        };
        Ok(MadeKey {
            kid: kid_for(&public),
            public,
            private: PrivateHalf::Pkcs8(SecretBytes::new(
                b"simulated key: no private half".to_vec(),
            )),
        })
    }

    fn destroy(&self, _backend: &str, _kid: &crate::types::Kid) -> Result<(), KeyError> {
        Ok(())
    }
}

/// One line of the timeline: an event, or the JWKS right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Line {
    Event {
        at: String,
        event: &'static str,
        set: String,
        alg: String,
        kid: String,
    },
    Jwks {
        at: String,
        event: &'static str,
        set: String,
        kids: Vec<String>,
        active: BTreeMap<String, String>,
    },
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The event line and snapshot line of one event.
pub fn lines_of(event: &Event) -> [Line; 2] {
    let at = rfc3339(event.at);
    let mut kids: Vec<String> = event
        .after
        .iter()
        .filter(|k| k.state.is_published())
        .map(|k| k.kid.to_string())
        .collect();
    kids.sort();
    let active = event
        .after
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .map(|k| (k.alg.to_string(), k.kid.to_string()))
        .collect();
    [
        Line::Event {
            at: at.clone(),
            event: event.kind.as_str(),
            set: event.set.to_string(),
            alg: event.alg.to_string(),
            kid: event.kid.to_string(),
        },
        Line::Jwks {
            at,
            event: "jwks",
            set: event.set.to_string(),
            kids,
            active,
        },
    ]
}

/// A simulation in progress: the real executor over an in-memory store.
pub struct Simulation {
    pub clock: Arc<ManualClock>,
    pub executor: Executor,
    pub store: Arc<dyn Store>,
}

impl Simulation {
    /// A fresh store and the policy, with the clock at `start`.
    pub async fn new(policy: Policy, start: DateTime<Utc>) -> anyhow::Result<Simulation> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await?);
        let clock = Arc::new(ManualClock::new(start));
        let (master, _) = MasterKey::generate()?;
        let policies = LivePolicies::new(Policies::from_policies(vec![policy])?);
        let executor = Executor::new(
            store.clone(),
            Arc::new(master),
            Arc::new(SimulatedKeys),
            clock.clone(),
            policies,
        );
        Ok(Simulation {
            clock,
            executor,
            store,
        })
    }

    /// Runs every transition due now.
    pub async fn tick(&self) -> anyhow::Result<Vec<Event>> {
        Ok(self.executor.tick().await?)
    }

    /// Runs until `end`, jumping from one due transition to the next, and
    /// hands every event to `on_event` as it happens.
    pub async fn run_until(
        &self,
        end: DateTime<Utc>,
        mut on_event: impl FnMut(&Event),
    ) -> anyhow::Result<()> {
        loop {
            for e in self.tick().await? {
                on_event(&e);
            }
            let now = self.clock.now();
            match self.executor.next_due().await? {
                Some(t) if t <= end => self.clock.set(t.max(now + chrono::Duration::seconds(1))),
                _ => break,
            }
        }
        Ok(())
    }

    /// All keys in the store.
    pub async fn keys(&self) -> anyhow::Result<Vec<StoredKey>> {
        Ok(self.store.keys().await?)
    }
}

/// The human-readable timeline line of an event.
pub fn text_line(event: &Event) -> String {
    let active: Vec<String> = event
        .after
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .map(|k| k.kid.to_string())
        .collect();
    let published = event
        .after
        .iter()
        .filter(|k| k.state.is_published())
        .count();
    format!(
        "{}  {:<11} {:<28}  jwks: {} keys, signing: {}",
        event.at.format("%Y-%m-%d %H:%M:%S"),
        event.kind.as_str(),
        event.kid.as_str(),
        published,
        active.join(", ")
    )
}
