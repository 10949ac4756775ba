//! Group commit for enrollments.
//!
//! Enrollment is the write that runs at fleet-rollout rates. Rather than one transaction of
//! five statements per device, concurrent enrollments are queued to one writer task that
//! commits whatever has queued up (up to [`MAX_BATCH`]) in one transaction of four
//! multi-row statements. Single use of tokens is still decided by one conditional UPDATE per
//! token row (`... WHERE used_at IS NULL ... RETURNING jti`), so concurrent enrollments with
//! one token, in one batch, in two batches or on two replicas, give exactly one device.

use super::enrollment::{EnrollRefusal, NewCertificate, NewDevice};
use super::{connect_pool, Backend, Registry, StoreError};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most enrollments committed in one transaction.
pub const MAX_BATCH: usize = 64;

/// One enrollment waiting to be committed.
#[derive(Debug, Clone)]
pub(super) struct EnrollJob {
    pub jti: String,
    pub device: NewDevice,
    pub cert: NewCertificate,
    pub now: i64,
    pub skew: i64,
}

pub(super) type EnrollOutcome = Result<Result<(), EnrollRefusal>, StoreError>;
pub(super) type EnrollRequest = (EnrollJob, oneshot::Sender<EnrollOutcome>);

/// A SQL parameter of one of the types the registry uses.
pub(super) enum Param {
    Text(String),
    OptText(Option<String>),
    Int(i64),
}

/// Parameters of one generated statement, with placeholders in order of appearance: `?` for
/// SQLite (anonymous parameters bind by position; named or numbered ones cost a linear
/// name lookup each in SQLite, quadratic over a batch) and `$n` for PostgreSQL.
pub(super) struct Params {
    backend: Backend,
    values: Vec<Param>,
}

impl Params {
    pub(super) fn new(backend: Backend) -> Self {
        Self {
            backend,
            values: Vec::new(),
        }
    }

    /// Adds a value and returns its placeholder.
    pub(super) fn add(&mut self, value: Param) -> String {
        self.values.push(value);
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${}", self.values.len()),
        }
    }

    /// `(p, p, ...)` for one row of values.
    pub(super) fn row(&mut self, values: impl IntoIterator<Item = Param>) -> String {
        let placeholders: Vec<String> = values.into_iter().map(|v| self.add(v)).collect();
        format!("({})", placeholders.join(", "))
    }

    pub(super) fn bind_as<'q, O>(
        self,
        mut q: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
        for p in self.values {
            q = match p {
                Param::Text(s) => q.bind(s),
                Param::OptText(s) => q.bind(s),
                Param::Int(i) => q.bind(i),
            };
        }
        q
    }

    pub(super) fn bind<'q>(
        self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for p in self.values {
            q = match p {
                Param::Text(s) => q.bind(s),
                Param::OptText(s) => q.bind(s),
                Param::Int(i) => q.bind(i),
            };
        }
        q
    }
}

/// Starts a group-commit writer (`run`, fed by the returned queue) on a thread of its own,
/// with its own single-threaded runtime and its own connection pool. It ends when every
/// sender is dropped.
///
/// Why a thread: on the shared runtime, each of the writer's awaits (one per statement)
/// queued behind hundreds of request tasks doing signature work, so batches took several
/// times longer than their database work and the CPU sat partly idle (measured with
/// `benches/enroll.rs` and `benches/attest.rs`).
pub(super) async fn spawn_dedicated<J, F, Fut>(
    name: &str,
    url: String,
    backend: Backend,
    sqlite_writer: Option<Arc<tokio::sync::Mutex<()>>>,
    capacity: usize,
    run: F,
) -> Result<mpsc::Sender<J>, StoreError>
where
    J: Send + 'static,
    F: FnOnce(Registry, mpsc::Receiver<J>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = mpsc::channel::<J>(capacity);
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), StoreError>>();
    let cannot = |e: std::io::Error| StoreError::Batch(format!("cannot start the {name}: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(cannot)?;
    std::thread::Builder::new()
        .name(format!("vouch-{}", name.replace(' ', "-")))
        .spawn(move || {
            runtime.block_on(async move {
                let pool = match connect_pool(&url, backend, 1).await {
                    Ok(pool) => pool,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let registry = Registry {
                    pool: pool.clone(),
                    backend,
                    sqlite_writer,
                    enroll_writer: None,
                    attest_writer: None,
                };
                run(registry, rx).await;
                pool.close().await;
            });
        })
        .map_err(cannot)?;
    ready_rx.await.map_err(|_| StoreError::WriterGone)??;
    Ok(tx)
}

/// Starts the enrollment writer (see [`spawn_dedicated`]).
pub(super) async fn spawn_writer(
    url: String,
    backend: Backend,
    sqlite_writer: Option<Arc<tokio::sync::Mutex<()>>>,
) -> Result<mpsc::Sender<EnrollRequest>, StoreError> {
    spawn_dedicated(
        "enrollment writer",
        url,
        backend,
        sqlite_writer,
        MAX_BATCH * 16,
        run_writer,
    )
    .await
}

async fn run_writer(registry: Registry, mut rx: mpsc::Receiver<EnrollRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let jobs: Vec<EnrollJob> = batch.iter().map(|(j, _)| j.clone()).collect();
        match registry.enroll_batch(&jobs).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // The batch as a whole failed (nothing was committed): commit each on its own,
            // so one bad enrollment cannot fail its neighbours.
            Err(_) if batch.len() > 1 => {
                for (job, reply) in batch {
                    let outcome = registry
                        .enroll_batch(std::slice::from_ref(&job))
                        .await
                        .map(|mut o| o.pop().unwrap_or(Err(EnrollRefusal::TokenUnknown)));
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment commit failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Batch(e.to_string())));
                }
            }
        }
    }
}

impl Registry {
    /// Commits `jobs` in one transaction and returns one outcome per job, in order.
    pub(super) async fn enroll_batch(
        &self,
        jobs: &[EnrollJob],
    ) -> Result<Vec<Result<(), EnrollRefusal>>, StoreError> {
        // Of several jobs with one token, only the first takes part; the rest share its fate.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let unique: Vec<usize> = (0..jobs.len())
            .filter(|&i| {
                jobs.get(i)
                    .is_some_and(|j| *first_of.entry(j.jti.as_str()).or_insert(i) == i)
            })
            .collect();

        let unique_jobs: Vec<&EnrollJob> = unique.iter().filter_map(|&i| jobs.get(i)).collect();
        let mut p = Params::new(self.backend);
        let mut used_case = String::new();
        for job in &unique_jobs {
            let (when, then) = (
                p.add(Param::Text(job.jti.clone())),
                p.add(Param::Int(job.now)),
            );
            used_case.push_str(&format!(" WHEN {when} THEN {then}"));
        }
        let mut device_case = String::new();
        for job in &unique_jobs {
            let when = p.add(Param::Text(job.jti.clone()));
            let then = p.add(Param::Text(job.device.id.clone()));
            device_case.push_str(&format!(" WHEN {when} THEN {then}"));
        }
        let in_list: Vec<String> = unique_jobs
            .iter()
            .map(|job| p.add(Param::Text(job.jti.clone())))
            .collect();
        let mut expiry_case = String::new();
        for job in &unique_jobs {
            let when = p.add(Param::Text(job.jti.clone()));
            let then = p.add(Param::Int(job.now.saturating_sub(job.skew)));
            expiry_case.push_str(&format!(" WHEN {when} THEN {then}"));
        }
        let sql = format!(
            "UPDATE bootstrap_tokens SET used_at = CASE jti{used_case} END, \
             device_id = CASE jti{device_case} END \
             WHERE jti IN ({}) AND used_at IS NULL AND expires_at > CASE jti{expiry_case} END \
             RETURNING jti",
            in_list.join(", ")
        );

        let mut tx = self.begin_write().await?;
        // INVARIANT: this conditional UPDATE is the only place a token becomes used; a token
        // row is returned to at most one enrollment, ever.
        let rows = p.bind(sqlx::query(&sql)).fetch_all(&mut *tx).await?;
        let won: HashSet<String> = rows
            .iter()
            .map(|r| sqlx::Row::try_get::<String, _>(r, 0))
            .collect::<Result<_, _>>()?;

        let winners: Vec<&EnrollJob> = unique
            .iter()
            .filter_map(|&i| jobs.get(i))
            .filter(|j| won.contains(&j.jti))
            .collect();
        if !winners.is_empty() {
            insert_winners(&mut tx, self.backend, &winners).await?;
        }
        tx.commit().await?;

        // Why did the others lose? One read, after the commit.
        let losers: Vec<&str> = unique
            .iter()
            .filter_map(|&i| jobs.get(i))
            .filter(|j| !won.contains(&j.jti))
            .map(|j| j.jti.as_str())
            .collect();
        let used: HashMap<String, bool> = if losers.is_empty() {
            HashMap::new()
        } else {
            let sql = format!(
                "SELECT jti, used_at FROM bootstrap_tokens WHERE jti IN ({})",
                (1..=losers.len())
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut q = sqlx::query_as::<_, (String, Option<i64>)>(&sql);
            for jti in &losers {
                q = q.bind(*jti);
            }
            q.fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|(jti, used_at)| (jti, used_at.is_some()))
                .collect()
        };
        Ok(jobs
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let first = first_of.get(job.jti.as_str()).copied().unwrap_or(i);
                if won.contains(&job.jti) {
                    if first == i {
                        Ok(())
                    } else {
                        Err(EnrollRefusal::TokenUsed)
                    }
                } else {
                    match used.get(&job.jti) {
                        None => Err(EnrollRefusal::TokenUnknown),
                        Some(true) => Err(EnrollRefusal::TokenUsed),
                        Some(false) => Err(EnrollRefusal::TokenExpired),
                    }
                }
            })
            .collect())
    }
}

async fn insert_winners(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    winners: &[&EnrollJob],
) -> Result<(), StoreError> {
    let mut devices = Params::new(backend);
    let mut device_rows = Vec::new();
    let mut certs = Params::new(backend);
    let mut cert_rows = Vec::new();
    let mut audit = Params::new(backend);
    let mut audit_rows = Vec::new();
    for job in winners {
        let d = &job.device;
        let labels =
            serde_json::to_string(&d.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        device_rows.push(devices.row([
            Param::Text(d.id.clone()),
            Param::Text(d.spiffe_id.clone()),
            Param::Text(d.zone.clone()),
            Param::OptText(d.device_class.clone()),
            Param::Text(labels),
            Param::Text("active".into()),
            Param::Int(job.now),
            Param::Int(job.now),
            Param::Text(job.cert.serial.clone()),
            Param::Int(job.cert.not_after),
        ]));
        cert_rows.push(certs.row([
            Param::Text(job.cert.serial.clone()),
            Param::Text(d.id.clone()),
            Param::Int(job.cert.not_before),
            Param::Int(job.cert.not_after),
            Param::Int(job.now),
        ]));
        let actor = format!("bootstrap-token:{}", job.jti);
        audit_rows.push(audit.row([
            Param::Int(job.now),
            Param::Text(actor.clone()),
            Param::Text("token.used".into()),
            Param::Text(job.jti.clone()),
            Param::Text(json!({"device_id": d.id}).to_string()),
        ]));
        audit_rows.push(
            audit.row([
                Param::Int(job.now),
                Param::Text(actor),
                Param::Text("device.enrolled".into()),
                Param::Text(d.id.clone()),
                Param::Text(
                    json!({"spiffe_id": d.spiffe_id, "zone": d.zone, "serial": job.cert.serial})
                        .to_string(),
                ),
            ]),
        );
    }
    let sql = format!(
        "INSERT INTO devices (id, spiffe_id, zone, device_class, labels, status, created_at, \
         updated_at, current_serial, current_not_after) VALUES {}",
        device_rows.join(", ")
    );
    devices.bind(sqlx::query(&sql)).execute(&mut *conn).await?;
    let sql = format!(
        "INSERT INTO certificates (serial, device_id, not_before, not_after, issued_at) VALUES {}",
        cert_rows.join(", ")
    );
    certs.bind(sqlx::query(&sql)).execute(&mut *conn).await?;
    let sql = format!(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES {}",
        audit_rows.join(", ")
    );
    audit.bind(sqlx::query(&sql)).execute(&mut *conn).await?;
    Ok(())
}
