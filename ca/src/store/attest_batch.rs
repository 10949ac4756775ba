//! Group commit for attestation: quote results recorded by a whole fleet go to one writer
//! task that commits whatever has queued in one transaction, then answers each waiting
//! request. Every device attests every 30 minutes, so a large fleet's traffic is a steady
//! stream of small writes; one transaction per write would serialize them on the database's
//! single writer (measured with `benches/attest.rs`). The writer (`group_commit`) keeps one
//! connection for its life and, under load, lets results gather for [`COMMIT_DELAY`] before
//! each commit.
//!
//! A result is recorded with its nonce in the attestation history, whose nonce column is
//! unique: that uses the nonce up. Of two results for one nonce, exactly one is recorded;
//! the other is answered `NonceUsed` and writes nothing. (Nonces are issued without a write,
//! see `crate::nonce`.)

use super::attestation::ResultEffect;
use super::batch::{Param, Params};
use super::group_commit::{self, Batch};
use super::{AttestationResult, AttestationState, Registry, StoreError};
use serde_json::json;
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};

/// Most jobs committed in one transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// How long the writer waits, once a result has arrived and the last batch held more than
/// one, before it takes what has queued and commits (PostgreSQL's `commit_delay`, for the
/// same reason). A batch costs the same few statements and thread hand-offs whatever its
/// size, and without a wait the writer commits as soon as it can, in small batches that
/// keep it busy. In the attest benchmark the wait took the database's CPU per attestation
/// from about 80 µs to about 55 µs. It adds at most this much to an attestation's answer
/// under load, and nothing to a lone one.
pub(crate) const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// A verified (or refused) quote's result, recorded if its nonce is unused and the facts it
/// was verified with still hold (the certificate and device in good standing, the AK still
/// bound). The nonce's tag, device, PCRs and expiry were checked before verification.
#[derive(Debug, Clone)]
pub struct AttestJob {
    /// The nonce the quote answered (hex).
    pub nonce: String,
    /// The device.
    pub device_id: String,
    /// The serial of the certificate the device presented.
    pub serial: String,
    /// The AK the quote was verified with (`TPMT_PUBLIC`, hex).
    pub ak_public: String,
    /// Now (Unix seconds).
    pub now: i64,
    /// The verifier's finding.
    pub result: AttestationResult,
}

/// What a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestWrite {
    /// The result is recorded; the device's attestation state now.
    Recorded(AttestationState),
    /// A result for this nonce is recorded already: nothing was written.
    NonceUsed,
    /// The certificate or the device is revoked, or the AK is no longer the device's:
    /// nothing was written.
    NotCurrent,
}

/// Attestation results, group-committed: at most one per device in a batch, and under load
/// a [`COMMIT_DELAY`] before each batch.
pub(super) struct Attestations;

impl Batch for Attestations {
    type Job = AttestJob;
    type Outcome = AttestWrite;
    const NAME: &'static str = "attestation writer";
    const MAX_BATCH: usize = MAX_BATCH;
    const COMMIT_DELAY: Option<std::time::Duration> = Some(COMMIT_DELAY);

    fn key(job: &AttestJob) -> Option<&str> {
        Some(&job.device_id)
    }

    async fn commit(
        registry: &Registry,
        conn: &mut AnyConnection,
        jobs: &[AttestJob],
    ) -> Result<Vec<AttestWrite>, StoreError> {
        registry.commit_batch_on(conn, jobs).await
    }
}

impl Registry {
    /// Records `job` through the attestation writer (group commit); returns once it is
    /// durable in the database, or refused.
    pub(crate) async fn write_attestation(
        &self,
        job: AttestJob,
    ) -> Result<AttestWrite, StoreError> {
        match &self.writers {
            Some(writers) => writers.attestations.submit(job).await,
            None => group_commit::commit_alone::<Attestations>(self, job).await,
        }
    }
}

impl Registry {
    /// Records `jobs` in one transaction (at most one per device) and returns one outcome
    /// per job, in order.
    ///
    /// In the usual case every job's facts hold and every nonce is fresh, and the batch is
    /// one statement that records all results with the facts checked in its `WHERE`, plus
    /// one audit and one device update per group of equal effect; no row comes back. When
    /// that statement records fewer results than there are jobs, its transaction is rolled
    /// back and the batch is sorted out by `commit_checked`, which runs the same statement
    /// naming the nonces it recorded, and reads the facts to tell the refusals apart. (Each
    /// statement is a round trip to SQLite's worker thread, and each row read is another;
    /// measured with `benches/attest.rs`.)
    pub async fn commit_attestation_batch(
        &self,
        jobs: &[AttestJob],
    ) -> Result<Vec<AttestWrite>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        self.commit_batch_on(&mut conn, jobs).await
    }

    /// [`Self::commit_attestation_batch`] on a connection the caller holds.
    async fn commit_batch_on(
        &self,
        conn: &mut AnyConnection,
        jobs: &[AttestJob],
    ) -> Result<Vec<AttestWrite>, StoreError> {
        let mut distinct: HashSet<&str> = HashSet::new();
        if jobs.iter().all(|job| distinct.insert(&job.device_id)) {
            if let Some(writes) = self.commit_all(conn, jobs).await? {
                return Ok(writes);
            }
        }
        self.commit_checked(conn, jobs).await
    }

    /// Records every job (one per device), or nothing and `None` if any job's facts no
    /// longer hold or its nonce is used.
    async fn commit_all(
        &self,
        conn: &mut AnyConnection,
        jobs: &[AttestJob],
    ) -> Result<Option<Vec<AttestWrite>>, StoreError> {
        let mut tx = self.begin_write_on(conn).await?;
        let effects: Vec<(&AttestJob, ResultEffect)> =
            jobs.iter().map(|job| (job, job.result.effect())).collect();
        let (sql, p) = self.record_statement(&effects, false);
        let inserted = p.bind(sqlx::query(&sql)).execute(&mut *tx).await?;
        if inserted.rows_affected() != jobs.len() as u64 {
            tx.rollback().await?;
            return Ok(None);
        }
        let writes = effects
            .iter()
            .map(|(_, effect)| AttestWrite::Recorded(effect.state))
            .collect();
        self.apply_effects(&mut tx, effects).await?;
        tx.commit().await?;
        Ok(Some(writes))
    }

    /// Records the jobs whose facts hold and whose nonce is unused, and tells the others
    /// apart by the facts read first: `NotCurrent` or `NonceUsed`; those write nothing.
    async fn commit_checked(
        &self,
        conn: &mut AnyConnection,
        jobs: &[AttestJob],
    ) -> Result<Vec<AttestWrite>, StoreError> {
        let mut tx = self.begin_write_on(conn).await?;

        // The facts each quote was verified with, as they stand now.
        let mut p = Params::new(self.backend);
        let serials: Vec<String> = jobs
            .iter()
            .map(|job| p.add(Param::Text(job.serial.clone())))
            .collect();
        let sql = format!(
            "SELECT k.serial, d.id, d.ak_public FROM certificates k \
             JOIN devices d ON d.id = k.device_id \
             WHERE k.serial IN ({}) AND k.revoked_at IS NULL AND d.status = 'active'",
            serials.join(", ")
        );
        let rows: Vec<(String, String, Option<String>)> =
            p.bind_as(sqlx::query_as(&sql)).fetch_all(&mut *tx).await?;
        let current: HashMap<String, (String, String)> = rows
            .into_iter()
            .filter_map(|(serial, id, ak)| Some((serial, (id, ak?))))
            .collect();
        let still_holds = |job: &AttestJob| {
            current
                .get(&job.serial)
                .is_some_and(|(id, ak)| *id == job.device_id && *ak == job.ak_public)
        };

        // The same statement as `commit_all`, naming the nonces it recorded.
        let effects: Vec<(&AttestJob, ResultEffect)> =
            jobs.iter().map(|job| (job, job.result.effect())).collect();
        let (sql, p) = self.record_statement(&effects, true);
        let inserted: Vec<(String,)> = p.bind_as(sqlx::query_as(&sql)).fetch_all(&mut *tx).await?;
        let recorded: HashSet<String> = inserted.into_iter().map(|(nonce,)| nonce).collect();
        // One winner per nonce (the writer never batches two results of one device, and a
        // nonce belongs to one device; this holds even if that changed).
        let mut winning: HashSet<&str> = HashSet::new();
        let winners: Vec<_> = effects
            .into_iter()
            .filter(|(job, _)| recorded.contains(&job.nonce) && winning.insert(job.nonce.as_str()))
            .collect();
        let states = self.apply_effects(&mut tx, winners).await?;
        tx.commit().await?;
        Ok(jobs
            .iter()
            .map(|job| match states.get(job.device_id.as_str()) {
                Some(state) if winning.contains(job.nonce.as_str()) => {
                    AttestWrite::Recorded(*state)
                }
                _ if !still_holds(job) => AttestWrite::NotCurrent,
                _ => AttestWrite::NonceUsed,
            })
            .collect())
    }

    /// The statement that records the results whose facts hold as they stand now (the
    /// certificate unrevoked and still naming the device, the device active, the AK still
    /// bound) and whose nonce is unused (the column is unique: a nonce recorded already
    /// inserts nothing); with `returning`, it names the nonces it recorded.
    fn record_statement(
        &self,
        effects: &[(&AttestJob, ResultEffect)],
        returning: bool,
    ) -> (String, Params) {
        let mut p = Params::new(self.backend);
        let rows: Vec<String> = effects
            .iter()
            .map(|(job, effect)| {
                p.row([
                    Param::Text(job.device_id.clone()),
                    Param::Text(job.serial.clone()),
                    Param::Text(job.ak_public.clone()),
                    Param::Int(job.now),
                    Param::Text(effect.outcome.into()),
                    Param::Text(effect.reason.clone()),
                    Param::OptText(effect.reference_set.clone()),
                    Param::Text(job.nonce.clone()),
                ])
            })
            .collect();
        let sql = format!(
            "WITH r (device_id, serial, ak_public, at, outcome, reason, reference_set, nonce) \
             AS (VALUES {}) \
             INSERT INTO attestations (device_id, at, outcome, reason, reference_set, nonce) \
             SELECT r.device_id, r.at, r.outcome, r.reason, r.reference_set, r.nonce FROM r \
             JOIN certificates k ON k.serial = r.serial \
             JOIN devices d ON d.id = k.device_id \
             WHERE k.revoked_at IS NULL AND d.status = 'active' AND d.id = r.device_id \
             AND d.ak_public = r.ak_public \
             ON CONFLICT (nonce) DO NOTHING{}",
            rows.join(", "),
            if returning { " RETURNING nonce" } else { "" }
        );
        (sql, p)
    }

    /// Moves the devices of recorded results (one per device) to their new state, with an
    /// audit record for each device whose state changes; returns the new states. One audit
    /// statement and one UPDATE per group of devices with the same effect (in a steady
    /// fleet: all the passes of a batch), as plain statements without a CASE per device,
    /// which SQLite compiles in time quadratic in the batch.
    async fn apply_effects<'j>(
        &self,
        tx: &mut super::WriteTx<'_>,
        recorded: Vec<(&'j AttestJob, ResultEffect)>,
    ) -> Result<HashMap<&'j str, AttestationState>, StoreError> {
        let mut states: HashMap<&str, AttestationState> = HashMap::new();
        // Devices by (time, effect): equal effects are applied by one statement.
        let mut groups: Vec<((i64, ResultEffect), Vec<&str>)> = Vec::new();
        for (job, effect) in recorded {
            states.insert(&job.device_id, effect.state);
            let key = (job.now, effect);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ids)) => ids.push(&job.device_id),
                None => groups.push((key, vec![&job.device_id])),
            }
        }
        for ((now, effect), ids) in groups {
            let action = if effect.outcome == "pass" {
                "device.attested"
            } else {
                "device.quarantined"
            };
            let detail = json!({"reason": effect.reason, "reference_set": effect.reference_set});
            // Placeholders are added in the order they appear (SQLite's are positional).
            // The audit record reads the state before the update.
            let mut p = Params::new(self.backend);
            let at = p.add(Param::Int(now));
            let action = p.add(Param::Text(action.into()));
            let detail = p.add(Param::Text(detail.to_string()));
            let list = id_list(&mut p, &ids);
            let state = p.add(Param::Text(effect.state.as_str().into()));
            let sql = format!(
                "INSERT INTO audit_log (at, actor, action, subject, detail) \
                 SELECT {at}, 'attestor', {action}, id, {detail} FROM devices \
                 WHERE id IN ({list}) AND attestation <> {state}"
            );
            p.bind(sqlx::query(&sql)).execute(&mut **tx).await?;

            let mut p = Params::new(self.backend);
            let state = p.add(Param::Text(effect.state.as_str().into()));
            // Only a pass moves the time of the last passing attestation.
            let last = if effect.state == AttestationState::Active {
                p.add(Param::Int(now))
            } else {
                "last_attested".to_owned()
            };
            let reason = p.add(Param::OptText(
                (effect.outcome == "fail").then_some(effect.reason),
            ));
            let at = p.add(Param::Int(now));
            let list = id_list(&mut p, &ids);
            let sql = format!(
                "UPDATE devices SET attestation = {state}, last_attested = {last}, \
                 attestation_reason = {reason}, updated_at = {at} WHERE id IN ({list})"
            );
            p.bind(sqlx::query(&sql)).execute(&mut **tx).await?;
        }
        Ok(states)
    }
}

/// Placeholders for `ids`, comma-separated.
fn id_list(p: &mut Params, ids: &[&str]) -> String {
    let list: Vec<String> = ids
        .iter()
        .map(|id| p.add(Param::Text((*id).to_owned())))
        .collect();
    list.join(", ")
}
