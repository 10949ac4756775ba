//! The device registry: bootstrap tokens, devices, certificates, the audit log and the CRL
//! state, in SQLite (one file, the default) or PostgreSQL (several replicas).
//!
//! One implementation serves both backends through sqlx's `Any` driver: the SQL is written
//! to the common subset (numbered `$n` parameters, BIGINT Unix-second times, TEXT JSON), and
//! only the migrations and connection settings differ. Every identity change writes its audit
//! record in the same transaction as the change. Each write transaction begins with a write,
//! so SQLite takes its write lock at once and concurrent writers queue on `busy_timeout`
//! instead of failing on a stale read snapshot.

mod audit;
mod crl;
pub use crl::StoredCrl;
mod devices;
mod enrollment;

pub use audit::AuditRecord;
pub use devices::{DeviceFilter, DeviceRecord, DeviceStatus, RevokeOutcome};
pub use enrollment::{EnrollRefusal, NewBootstrapToken, NewCertificate, NewDevice, RenewRefusal};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// Registry errors that are not a refusal of the request: the caller answers them with a
/// generic internal error and logs them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no supported backend.
    #[error("database URL must start with `sqlite:` or `postgres:`")]
    UnsupportedUrl,
    /// A database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not decode (a corrupt row).
    #[error("stored value does not decode: {0}")]
    Corrupt(String),
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL (or a compatible engine).
    Postgres,
}

/// The device registry.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: AnyPool,
    backend: Backend,
}

impl Registry {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and brings the schema
    /// up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                         PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Row counts of the main tables, for tests and the operator's overview.
    pub async fn counts(&self) -> Result<TableCounts, StoreError> {
        let one = |sql: &'static str| async move {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
            Ok::<i64, StoreError>(n)
        };
        Ok(TableCounts {
            devices: one("SELECT COUNT(*) FROM devices").await?,
            certificates: one("SELECT COUNT(*) FROM certificates").await?,
            audit_records: one("SELECT COUNT(*) FROM audit_log").await?,
            used_tokens: one("SELECT COUNT(*) FROM bootstrap_tokens WHERE used_at IS NOT NULL")
                .await?,
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Row counts, see [`Registry::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCounts {
    /// Devices.
    pub devices: i64,
    /// Certificates issued.
    pub certificates: i64,
    /// Audit records.
    pub audit_records: i64,
    /// Bootstrap tokens consumed.
    pub used_tokens: i64,
}

fn col<T>(row: &AnyRow, name: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    row.try_get(name).map_err(StoreError::from)
}
