//! The daemon's [`Parts`] and [`Listeners`] from its validated config, as
//! `jwksd serve` builds them. Tests that run the daemon in their own process
//! build it through the same two functions, so they start what `serve`
//! starts; what `serve` does besides (root check, hygiene, signals, the
//! master key's origin) is process-wide and stays there.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::{Listeners, Parts};
use crate::config::daemon::{Config, ServerConfig};
use crate::config::policy::Policies;
use crate::http::paths::PublicUrl;
use crate::keys::backend::Backends;
use crate::keys::seal::MasterKey;
use zeroize::Zeroizing;

impl Parts {
    /// TLS certificate, store and key backends from `config`, with the
    /// system clock, around the `policies` and `master` key the caller
    /// loaded; `pkcs11_pin_env` is what `JWKSD_PKCS11_PIN` held. Errors
    /// name the setting at fault.
    pub async fn from_config(
        config: &Config,
        policies: Policies,
        master: MasterKey,
        pkcs11_pin_env: Option<Zeroizing<Vec<u8>>>,
    ) -> anyhow::Result<Parts> {
        let backends = Arc::new(Backends::from_config(
            config,
            pkcs11_pin_env.as_deref().map(Vec::as_slice),
        )?);
        policies.check_backends(&backends.names())?;
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                crate::http::tls::CertStore::load(cert, key)
                    .context("cannot use the TLS certificate (server.tls_cert, server.tls_key)")?,
            )),
            _ => None,
        };
        let store = crate::store::open(&config.store)
            .await
            .with_context(|| format!("cannot open the store {}", config.store))?;
        Ok(Parts {
            store,
            master: Arc::new(master),
            policies,
            policies_dir: config.policies_dir.clone(),
            clock: Arc::new(crate::clock::GuardedClock::system()),
            backends,
            public_url: PublicUrl::new(&config.server.public_url),
            audit_spool: Some(config.audit_spool.clone()),
            audit_retention: config.audit_retention,
            audit_refusals_per_minute: config.audit_refusals_per_minute,
            audit_spool_refusal_bytes: config.audit_spool_refusal_bytes,
            limits: crate::net::Limits {
                max_connections: config.server.max_connections,
                header_timeout: config.server.header_timeout,
                ..Default::default()
            },
            socket_limits: crate::socket::SocketLimits {
                request_timeout: config.server.request_timeout,
                max_connections_per_uid: config.server.max_connections_per_uid,
            },
            tls,
            tokens: config.tokens.clone(),
        })
    }
}

impl Listeners {
    /// Binds `server.listen`, `server.admin_listen` and the socket at
    /// `socket_path` (`server.socket` unless the command line names another).
    pub async fn bind(server: &ServerConfig, socket_path: PathBuf) -> anyhow::Result<Listeners> {
        let public = tokio::net::TcpListener::bind(server.listen)
            .await
            .with_context(|| format!("cannot listen on {} (server.listen)", server.listen))?;
        let admin = match server.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?,
            ),
            None => None,
        };
        let socket = crate::socket::bind(
            &socket_path,
            server.socket_mode,
            server.socket_group.as_deref(),
        )?;
        Ok(Listeners {
            public,
            admin,
            socket,
            socket_path,
        })
    }
}
