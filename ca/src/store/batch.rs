//! Group commit for enrollments, and the parameter lists of generated multi-row statements.
//!
//! Enrollment is the write that runs at fleet-rollout rates. Rather than one transaction of
//! five statements per device, concurrent enrollments go to the enrollment writer
//! (`group_commit`), which commits whatever has queued up (up to [`MAX_BATCH`]) in one
//! transaction of four multi-row statements. Single use of tokens is still decided by one conditional UPDATE per
//! token row (`... WHERE used_at IS NULL ... RETURNING jti`), so concurrent enrollments with
//! one token, in one batch, in two batches or on two replicas, give exactly one device.

use super::enrollment::{EnrollRefusal, NewCertificate, NewDevice};
use super::group_commit::Batch;
use super::peers::insert_key_agreement;
use super::{Backend, Registry, StoreError};
use serde_json::json;
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};

/// Most enrollments committed in one transaction.
pub(crate) const MAX_BATCH: usize = 64;

/// One enrollment waiting to be committed.
#[derive(Debug, Clone)]
pub(super) struct EnrollJob {
    pub jti: String,
    pub device: NewDevice,
    pub cert: NewCertificate,
    pub now: i64,
    pub skew: i64,
}

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

/// Enrollments, group-committed: one transaction of four multi-row statements per batch.
pub(super) struct Enrollments;

impl Batch for Enrollments {
    type Job = EnrollJob;
    type Outcome = Result<(), EnrollRefusal>;
    const NAME: &'static str = "enrollment writer";
    const MAX_BATCH: usize = MAX_BATCH;

    async fn commit(
        registry: &Registry,
        conn: &mut AnyConnection,
        jobs: &[EnrollJob],
    ) -> Result<Vec<Self::Outcome>, StoreError> {
        registry.enroll_batch(conn, jobs).await
    }
}

impl Registry {
    /// Commits `jobs` in one transaction and returns one outcome per job, in order.
    async fn enroll_batch(
        &self,
        conn: &mut AnyConnection,
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

        let mut tx = self.begin_write_on(conn).await?;
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
            // On the writer's own connection: its pool has no other.
            q.fetch_all(&mut *conn)
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
    for job in winners {
        if let Some(ka) = &job.cert.key_agreement {
            let (device, cert) = (&job.device.id, &job.cert);
            insert_key_agreement(conn, device, &cert.serial, cert.not_after, ka, job.now).await?;
        }
    }
    let sql = format!(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES {}",
        audit_rows.join(", ")
    );
    audit.bind(sqlx::query(&sql)).execute(&mut *conn).await?;
    Ok(())
}
