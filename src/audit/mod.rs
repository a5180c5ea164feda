//! The audit trail (DESIGN §4): what a record holds and how the chain binds
//! records together ([`chain`]), and the writer that appends them in
//! batches, spooling to a local file while the store is down ([`writer`]).
//! Storage itself is the store's.

pub mod bounded;
pub mod chain;
pub mod writer;

pub use chain::{
    AuditEntry, AuditRecord, ChainError, GENESIS_HASH, chain_after, chain_hash, entry,
    verify_chain, verify_stored,
};
pub use writer::{AuditError, AuditMetrics, Auditor, Receipt, Ticket};
