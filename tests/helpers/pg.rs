//! PostgreSQL test databases: each test gets its own database, created
//! through `JWKSD_TEST_POSTGRES_URL` and dropped afterwards, so tests run in
//! parallel and leave nothing behind.

#![allow(dead_code)]

use std::time::Duration;

use sqlx::Connection as _;

/// `None` (after saying why, once) when PostgreSQL is not available and
/// this is not CI; with `CI=true` a missing server fails the test.
pub async fn pg_or_skip(what: &str) -> Option<PgTestDb> {
    match PgTestDb::create().await {
        Ok(db) => Some(db),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{what} cannot run with CI=true: {why}")
        }
        Err(why) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
            None
        }
    }
}

/// A database `jwksd_test_<random>` created through the admin URL and
/// dropped (with its connections) when this value is dropped, also when the
/// test panics.
pub struct PgTestDb {
    pub admin: String,
    pub name: String,
    pub url: String,
}

impl PgTestDb {
    pub async fn create() -> Result<PgTestDb, String> {
        let admin = std::env::var("JWKSD_TEST_POSTGRES_URL")
            .map_err(|_| "JWKSD_TEST_POSTGRES_URL is not set".to_owned())?;
        let mut conn =
            tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
                .await
                .map_err(|_| {
                    "the server at JWKSD_TEST_POSTGRES_URL did not answer within 5 s".to_owned()
                })?
                .map_err(|e| format!("cannot connect to JWKSD_TEST_POSTGRES_URL: {e}"))?;
        let name = format!("jwksd_test_{:016x}", random_u64());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("cannot create a test database: {e}"))?;
        let url = with_database(&admin, &name);
        Ok(PgTestDb { admin, name, url })
    }
}

impl PgTestDb {
    /// Makes this database refuse every connection and cuts the open ones,
    /// as a stopped server would for this test alone; `false` lets them in
    /// again.
    pub async fn block(&self, blocked: bool) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {}",
            self.name, !blocked
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        if blocked {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                .bind(&self.name)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async work on a
        // thread of its own and wait for it.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// `url` with its database (path) replaced by `name`, query kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
