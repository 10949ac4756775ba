//! The device registry: bootstrap tokens, devices, certificates, the audit log and the CRL
//! state, in SQLite (one file, the default) or PostgreSQL (several replicas).
//!
//! One implementation serves both backends through sqlx's `Any` driver: the SQL is written
//! to the common subset (numbered `$n` parameters, BIGINT Unix-second times, TEXT JSON), and
//! only the migrations and connection settings differ. Every identity change writes its audit
//! record in the same transaction as the change. Each write transaction begins with a write,
//! so SQLite takes its write lock at once and concurrent writers queue on `busy_timeout`
//! instead of failing on a stale read snapshot.

mod attest_batch;
mod attestation;
mod audit;
mod batch;
mod crl;
pub use crl::StoredCrl;
mod decisions;
pub use decisions::{DecisionFilter, DecisionRecord, NewDecision, ShadowOutcome};
mod devices;
mod enrollment;
mod group_commit;
mod operator_tokens;
mod peers;
mod policy_sequence;
pub use peers::{NewKeyAgreement, PeerCredentials, PeerEntry};
mod tpm;

pub use attest_batch::{AttestJob, AttestWrite};
pub use attestation::{AttestationRecord, AttestationResult, ReleaseOutcome, SweepOutcome};
pub use audit::AuditRecord;
pub use devices::{AttestationState, DeviceFilter, DeviceRecord, DeviceStatus, RevokeOutcome};
pub use enrollment::{EnrollRefusal, NewBootstrapToken, NewCertificate, NewDevice, RenewRefusal};
pub use tpm::{
    ek_fingerprint, AttestingDevice, NewActivation, TpmEnrollRefusal, TpmEnrollment, TpmKeys,
};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use std::sync::Arc;
use std::time::Duration;

/// Connection settings for SQLite: WAL (readers never block the writer), a busy timeout for
/// writers in other processes, foreign keys on, and `synchronous = NORMAL`, which in WAL mode
/// keeps the database consistent on power loss and may lose only the last transactions
/// before it (SQLite's documented trade-off; no fsync per commit). Statement journals of
/// multi-row writes stay in memory; each connection caches up to 16 MiB of pages (the
/// default 2 MiB made the writer re-read index pages under load). The WAL is checkpointed
/// into the database every 8192 pages (32 MiB) rather than every 1000: a page written many
/// times between checkpoints (the device rows, the ends of the history's indexes) is
/// copied once, and the fsync that ends a checkpoint comes eight times less often. In the
/// attest benchmark that cut the pages copied by checkpoints by 60% and the fsyncs by 85%.
pub(crate) const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA busy_timeout = 10000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -16384",
    "PRAGMA wal_autocheckpoint = 8192",
];

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
    /// A group commit failed; the enrollment was not recorded.
    #[error("enrollment commit failed: {0}")]
    Batch(String),
    /// The enrollment writer task has stopped.
    #[error("enrollment writer has stopped")]
    WriterGone,
    /// A stored value does not decode (a corrupt row).
    #[error("stored value does not decode: {0}")]
    Corrupt(String),
    /// Other replicas kept changing a shared row this write depends on.
    #[error("contended: {0}")]
    Contended(&'static str),
}

impl StoreError {
    /// Whether the database is unreachable or busy for now (not refusing this request): the
    /// pool timed out or is closed, the connection failed, the server is shutting down or
    /// starting (PostgreSQL classes 08 and 57P), or SQLite is busy. Worth a retry later.
    pub fn is_unavailable(&self) -> bool {
        let Self::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || code.starts_with("57P")
                    // SQLITE_BUSY, SQLITE_LOCKED (and their extended codes).
                    || code == "5"
                    || code == "6"
                    || code.parse::<u32>().is_ok_and(|c| c & 0xff == 5 || c & 0xff == 6)
            }),
            _ => false,
        }
    }
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL (or a compatible engine).
    Postgres,
}

/// The backend a database URL names.
fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// How long a request waits for a database connection before it is answered `503
/// not_ready`: when the database is down, callers learn it quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a pool with the backend's connection settings.
async fn connect_pool(
    url: &str,
    backend: Backend,
    max_connections: u32,
) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let mut options = AnyPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT);
    if backend == Backend::Sqlite {
        options = options.after_connect(|conn, _meta| {
            Box::pin(async move {
                // One statement per call, so that each is surely applied.
                for pragma in SQLITE_PRAGMAS {
                    conn.execute(*pragma).await?;
                }
                Ok(())
            })
        });
    }
    Ok(options.connect(url).await?)
}

/// The device registry.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: AnyPool,
    backend: Backend,
    /// The database URL (for PostgreSQL's LISTEN connection); `None` inside a writer.
    url: Option<String>,
    /// SQLite allows one writer at a time. Writers in this process queue here, in order,
    /// instead of polling SQLite's lock with `busy_timeout` sleeps (which cost milliseconds
    /// per conflict under load). `None` for PostgreSQL, which has row locks.
    sqlite_writer: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The group-commit writers (see `group_commit`). `None` inside a writer itself, so
    /// that a writer does not keep its own queue alive.
    writers: Option<Writers>,
}

/// The queues of the group-commit writers.
#[derive(Debug, Clone)]
struct Writers {
    enrollments: group_commit::Writer<batch::Enrollments>,
    attestations: group_commit::Writer<attest_batch::Attestations>,
    decisions: group_commit::Writer<decisions::Decisions>,
}

impl Registry {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and brings the schema
    /// up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let backend = backend_of(url)?;
        let pool = connect_pool(url, backend, max_connections).await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let sqlite_writer =
            (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let spawn_args = || (url.to_owned(), backend, sqlite_writer.clone());
        let writers = Writers {
            enrollments: spawn_writer(spawn_args()).await?,
            attestations: spawn_writer(spawn_args()).await?,
            decisions: spawn_writer(spawn_args()).await?,
        };
        Ok(Self {
            pool,
            backend,
            url: Some(url.to_owned()),
            sqlite_writer,
            writers: Some(writers),
        })
    }

    /// Begins a write transaction, first taking this process's SQLite writer turn.
    async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        let turn = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self.pool.begin().await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Begins a write transaction on `conn`, a connection the caller holds (a group-commit
    /// writer keeps one for its life: taking a connection from the pool and giving it back
    /// costs a ping each way), first taking this process's SQLite writer turn.
    async fn begin_write_on<'c>(
        &self,
        conn: &'c mut sqlx::AnyConnection,
    ) -> Result<WriteTx<'c>, StoreError> {
        let turn = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = sqlx::Connection::begin(conn).await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers (for `/readyz`).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The value of a SQLite pragma on a pooled connection (for tests of the settings).
    pub async fn sqlite_pragma(&self, name: &str) -> Result<String, StoreError> {
        let sql = format!("PRAGMA {name}");
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        let value: Result<i64, _> = sqlx::Row::try_get(&row, 0);
        match value {
            Ok(v) => Ok(v.to_string()),
            Err(_) => Ok(sqlx::Row::try_get::<String, _>(&row, 0)?),
        }
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

    /// Appends an audit record in a transaction of its own (for changes that live outside
    /// the registry's tables, such as a new policy set).
    pub async fn audit(
        &self,
        at: i64,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        audit::append(&mut tx, at, actor, action, subject, detail).await?;
        tx.commit().await
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A write transaction holding the SQLite writer turn (if any) until it ends.
struct WriteTx<'a> {
    tx: sqlx::Transaction<'a, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl WriteTx<'_> {
    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
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

/// Starts one group-commit writer.
async fn spawn_writer<B: group_commit::Batch>(
    (url, backend, sqlite_writer): (String, Backend, Option<Arc<tokio::sync::Mutex<()>>>),
) -> Result<group_commit::Writer<B>, StoreError> {
    group_commit::Writer::spawn(url, backend, sqlite_writer).await
}
