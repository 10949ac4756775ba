//! Group commit for enrollments.
//!
//! Enrollment is the write that runs at fleet-rollout rates. Rather than one transaction of
//! five statements per device, concurrent enrollments are queued to one writer task that
//! commits whatever has queued up (up to [`MAX_BATCH`]) in one transaction of four
//! multi-row statements. Single use of tokens is still decided by one conditional UPDATE per
//! token row (`... WHERE used_at IS NULL ... RETURNING jti`), so concurrent enrollments with
//! one token, in one batch, in two batches or on two replicas, give exactly one device.

use super::enrollment::{EnrollRefusal, NewCertificate, NewDevice};
use super::{Registry, StoreError};
use serde_json::json;
use std::collections::{HashMap, HashSet};
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
enum Param {
    Text(String),
    OptText(Option<String>),
    Int(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    params: Vec<Param>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for p in params {
        q = match p {
            Param::Text(s) => q.bind(s),
            Param::OptText(s) => q.bind(s),
            Param::Int(i) => q.bind(i),
        };
    }
    q
}

/// Builds `($1, $2, ...), ($n, ...)` for `rows` rows of `width` parameters after `offset`.
fn placeholders(rows: usize, width: usize, offset: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (0..width)
                .map(|c| format!("${}", offset + r * width + c + 1))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts the writer task for `registry`; it ends when every sender is dropped.
pub(super) fn spawn_writer(registry: Registry) -> mpsc::Sender<EnrollRequest> {
    let (tx, mut rx) = mpsc::channel::<EnrollRequest>(MAX_BATCH * 16);
    tokio::spawn(async move {
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
                // The batch as a whole failed (nothing was committed): commit each on its
                // own, so one bad enrollment cannot fail its neighbours.
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
    });
    tx
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

        let mut tx = self.begin_write().await?;
        // INVARIANT: this conditional UPDATE is the only place a token becomes used; a token
        // row is returned to at most one enrollment, ever.
        let mut used_case = String::new();
        let mut device_case = String::new();
        let mut expiry_case = String::new();
        let mut in_list = Vec::new();
        let mut params = Vec::new();
        for &i in &unique {
            let Some(job) = jobs.get(i) else { continue };
            let n = params.len();
            used_case.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 2));
            device_case.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 3));
            expiry_case.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 4));
            in_list.push(format!("${}", n + 1));
            params.push(Param::Text(job.jti.clone()));
            params.push(Param::Int(job.now));
            params.push(Param::Text(job.device.id.clone()));
            params.push(Param::Int(job.now.saturating_sub(job.skew)));
        }
        let sql = format!(
            "UPDATE bootstrap_tokens SET used_at = CASE jti{used_case} END, \
             device_id = CASE jti{device_case} END \
             WHERE jti IN ({}) AND used_at IS NULL AND expires_at > CASE jti{expiry_case} END \
             RETURNING jti",
            in_list.join(", ")
        );
        let rows = bind_all(sqlx::query(&sql), params)
            .fetch_all(&mut *tx)
            .await?;
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
            insert_winners(&mut tx, &winners).await?;
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
    winners: &[&EnrollJob],
) -> Result<(), StoreError> {
    let mut devices = Vec::new();
    let mut certs = Vec::new();
    let mut audit = Vec::new();
    for job in winners {
        let d = &job.device;
        let labels =
            serde_json::to_string(&d.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        devices.extend([
            Param::Text(d.id.clone()),
            Param::Text(d.spiffe_id.clone()),
            Param::Text(d.zone.clone()),
            Param::OptText(d.device_class.clone()),
            Param::Text(labels),
            Param::Int(job.now),
            Param::Text(job.cert.serial.clone()),
            Param::Int(job.cert.not_after),
        ]);
        certs.extend([
            Param::Text(job.cert.serial.clone()),
            Param::Text(d.id.clone()),
            Param::Int(job.cert.not_before),
            Param::Int(job.cert.not_after),
            Param::Int(job.now),
        ]);
        let actor = format!("bootstrap-token:{}", job.jti);
        audit.extend([
            Param::Int(job.now),
            Param::Text(actor.clone()),
            Param::Text("token.used".into()),
            Param::Text(job.jti.clone()),
            Param::Text(json!({"device_id": d.id}).to_string()),
            Param::Int(job.now),
            Param::Text(actor),
            Param::Text("device.enrolled".into()),
            Param::Text(d.id.clone()),
            Param::Text(
                json!({"spiffe_id": d.spiffe_id, "zone": d.zone, "serial": job.cert.serial})
                    .to_string(),
            ),
        ]);
    }
    // Devices: status 'active', created_at = updated_at.
    let rows: Vec<String> = (0..winners.len())
        .map(|r| {
            let b = r * 8;
            format!(
                "(${}, ${}, ${}, ${}, ${}, 'active', ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 6,
                b + 7,
                b + 8
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO devices (id, spiffe_id, zone, device_class, labels, status, created_at, \
         updated_at, current_serial, current_not_after) VALUES {}",
        rows.join(", ")
    );
    bind_all(sqlx::query(&sql), devices)
        .execute(&mut *conn)
        .await?;
    let sql = format!(
        "INSERT INTO certificates (serial, device_id, not_before, not_after, issued_at) VALUES {}",
        placeholders(winners.len(), 5, 0)
    );
    bind_all(sqlx::query(&sql), certs)
        .execute(&mut *conn)
        .await?;
    let sql = format!(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES {}",
        placeholders(winners.len() * 2, 5, 0)
    );
    bind_all(sqlx::query(&sql), audit)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
