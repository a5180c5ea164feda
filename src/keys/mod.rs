//! Key material: generation and signing ([`SigningKey`], the aws-lc-rs
//! backend in `aws_lc`), keys kept in a PKCS#11 token ([`pkcs11`]), where
//! private halves live and which backend makes a key ([`backend`]), sealing
//! private halves under the master key ([`seal`]) and the one container for
//! secret bytes ([`secret`]). Nothing outside this folder names the crypto
//! backend.
//!
//! Owns: generating RS384 (RSA) and ES384 (P-384) keys as PKCS#8, parsing a
//! PKCS#8 key once into a [`SigningKey`], producing JOSE signature bytes, and
//! the CSPRNG ([`fill_random`]).
//! Does not own: JWK/JWS encoding (`jose`), at-rest encryption (`seal`),
//! storage, or deciding which key signs (`lifecycle`). Backend types never
//! appear in this module's public signatures; they stay in the private
//! `aws_lc` submodule.

mod aws_lc;
pub mod backend;
pub mod material;
pub mod owner_file;
pub mod pkcs11;
pub mod public;
pub mod seal;
pub mod secret;
pub mod signing;

pub use material::{
    EC_COORD_LEN, ES384_SIGNATURE_LEN, GeneratedKey, KeyError, PublicKey, RSA_BITS,
};
pub use signing::{SigningKey, fill_random, generate};

#[cfg(test)]
mod tests;
