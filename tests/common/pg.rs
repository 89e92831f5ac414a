//! A private PostgreSQL schema per test, on the server in
//! `WASMQ_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! When the server is unreachable, [`pg_env`] returns `None` (the caller
//! skips) unless `CI=true`, where it panics: CI must not skip PostgreSQL.

use rand::Rng;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::str::FromStr;
use std::time::Duration;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct PgEnv {
    /// The server URL as given (no schema, no application name).
    pub base_url: String,
    pub schema: String,
}

impl PgEnv {
    /// The URL of this test's schema, with connections named `app`.
    pub fn url(&self, app: &str) -> String {
        let sep = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        // libpq-style `options` (sqlx 0.9 parses it from the URL).
        format!(
            "{}{sep}options=-c%20search_path%3D{}&application_name={app}",
            self.base_url, self.schema
        )
    }
}

pub async fn pg_admin(base_url: &str) -> Result<PgConnection, String> {
    let opts = PgConnectOptions::from_str(base_url).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&opts))
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

/// Creates a fresh schema; `None` when PostgreSQL is unreachable outside CI.
pub async fn pg_env() -> Option<PgEnv> {
    let base_url = std::env::var("WASMQ_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
    let mut conn = match pg_admin(&base_url).await {
        Ok(c) => c,
        // Never print the URL: it may carry a password.
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL is unreachable ({e}) and CI=true: failing")
        }
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL is unreachable ({e}); set WASMQ_TEST_PG_URL");
            return None;
        }
    };
    let schema = format!("e2e_{:016x}", rand::thread_rng().r#gen::<u64>());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create the test schema");
    conn.close().await.ok();
    Some(PgEnv { base_url, schema })
}

pub async fn drop_schema(pg: &PgEnv) {
    let result = async {
        let mut conn = pg_admin(&pg.base_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            pg.schema
        )))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        conn.close().await.ok();
        Ok::<_, String>(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("could not drop test schema {}: {e}", pg.schema);
    }
}
