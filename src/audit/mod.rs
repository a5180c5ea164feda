//! The audit trail (DESIGN §4): what a record holds and how the keyed chain
//! binds records together ([`chain`]), the chain's key ([`key`]), and the
//! writer that appends them in batches, spooling to a local file while the
//! store is down ([`writer`]). Storage itself is the store's.

pub mod bounded;
pub mod chain;
mod hex;
pub mod key;
pub mod upgrade;
pub mod writer;

pub use chain::{
    Anchor, AuditEntry, AuditRecord, ChainError, GENESIS_HASH, Verified, Witness, WitnessError,
    chain_after, chain_hash, chain_mac, check_witness, entry, switch_after, verify_stored,
};
pub use key::{AuditKey, ChainKeys};
pub use writer::{AuditError, AuditMetrics, Auditor, Receipt, Ticket};
