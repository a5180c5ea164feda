//! Which store `store.url` names, opened once at start.

use std::sync::Arc;

use super::api::{Store, StoreError};
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use crate::config::daemon::StoreUrl;

/// Opens the store for reading (`jwksd jwks`): SQLite read-only, never
/// created or migrated; PostgreSQL through the normal open (migrations are
/// idempotent and a reader needs the same schema).
pub async fn open_read_only(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open_read_only(path).await?)),
        StoreUrl::Postgres(_) => open(url).await,
    }
}

/// Opens (and migrates) the store named by the config.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreUrl::Postgres(url) => Ok(Arc::new(PostgresStore::open(url).await?)),
    }
}
