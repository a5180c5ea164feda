//! Where new key pairs come from: the seam between the lifecycle, which
//! decides when a key is generated, and the code that makes one.

use super::material::{GeneratedKey, KeyError};
use crate::types::Alg;

/// Where new key pairs come from. The daemon uses [`AwsLcKeys`]; `jwksd
/// simulate` uses a source of public-only stand-ins, since a simulated year
/// of rotations needs kids and JWKS entries, never a signature.
pub trait KeySource: Send + Sync + 'static {
    /// Generates one key pair. Blocking: called on a low-priority thread of
    /// its own (`workers::background::run_low_priority`).
    fn generate(&self, alg: Alg, rsa_bits: u32) -> Result<GeneratedKey, KeyError>;
}

/// Real keys from aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct AwsLcKeys;

impl KeySource for AwsLcKeys {
    fn generate(&self, alg: Alg, rsa_bits: u32) -> Result<GeneratedKey, KeyError> {
        super::signing::generate(alg, rsa_bits)
    }
}
