//! [`Shared`]: the handles every server and the tick loop read. Built once
//! by the daemon; each router takes what it needs from it.

use std::sync::Arc;

use crate::audit::Auditor;
use crate::keyring::{Keyring, KeyringError};
use crate::keys::seal::MasterKey;
use crate::lifecycle::Executor;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::types::SetName;
use crate::workers::signing_pool::SigningPool;

/// State shared by every request handler and the tick loop.
pub struct Shared {
    pub keyring: Keyring,
    pub scheduler: Executor,
    pub store: Arc<dyn Store>,
    pub master: Arc<MasterKey>,
    pub auditor: Auditor,
    pub metrics: Metrics,
    /// `server.public_url` without a trailing `/`.
    pub public_url: String,
    /// The RSA signing threads, one per core (see `signing_pool`).
    pub signers: SigningPool,
    /// Per-caller bounds from the policies' `[[callers]]`.
    pub caller_limits: crate::socket::CallerLimits,
}

impl Shared {
    /// The public URL of a set's JWKS (the `jku` header value).
    pub fn jwks_url(&self, set: &SetName) -> String {
        if set.as_str() == "default" {
            format!("{}/.well-known/jwks.json", self.public_url)
        } else {
            format!("{}/jwks/{set}.json", self.public_url)
        }
    }

    /// Rebuilds what this replica serves from the store.
    pub async fn refresh(&self) -> Result<(), KeyringError> {
        let policies = self.scheduler.policies();
        match self
            .keyring
            .refresh(self.store.as_ref(), &policies, &self.master)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                self.metrics.store_errors.inc();
                Err(e)
            }
        }
    }
}
