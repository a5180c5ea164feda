//! The TCP listeners: the public JWKS endpoint (`public`) and the admin
//! endpoint with health and metrics (`admin`).

pub mod admin;
pub mod public;
