//! [`LivePolicies`]: the policies in force, shared by every reader and
//! replaced whole when a reload succeeds.

use std::sync::{Arc, RwLock};

use super::policy::Policies;

/// The policies in force. Cheap to clone (one shared cell); readers take a
/// snapshot with [`current`](LivePolicies::current) and keep using it for
/// the whole request, so a reload never changes a policy under a request.
#[derive(Clone)]
pub struct LivePolicies(Arc<RwLock<Arc<Policies>>>);

impl LivePolicies {
    /// Starts with `policies` in force.
    pub fn new(policies: Policies) -> Self {
        LivePolicies(Arc::new(RwLock::new(Arc::new(policies))))
    }

    /// The policies in force now.
    pub fn current(&self) -> Arc<Policies> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `policies` in force for every later [`current`](Self::current).
    /// The caller has validated them: a refused reload never gets here.
    pub fn replace(&self, policies: Policies) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
    }
}
