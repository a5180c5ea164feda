//! The schema migrations, compiled into the binary.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The migrations of one database, in order (`sqlite.rs` and
/// `postgres.rs` each ship theirs, compiled into the binary: a deployed
/// daemon never looks for SQL files on disk). Both schemas move in step,
/// so the versions and descriptions are named once.
pub fn migrator(sql: [&'static str; 5]) -> Migrator {
    const DESCRIPTIONS: [&str; 5] = [
        "keys and audit",
        "lease",
        "live keys index",
        "keyed audit chain",
        "key backends",
    ];
    Migrator::with_migrations(
        (1..)
            .zip(DESCRIPTIONS.into_iter().zip(sql))
            .map(|(version, (description, sql))| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}
