//! Group commit for attestation: nonces issued and quote results recorded by a whole fleet
//! go to one writer task that commits whatever has queued in one transaction, then answers
//! each waiting request. Every device attests every 30 minutes, so a large fleet's traffic
//! is a steady stream of small writes; one transaction per write would serialize them on the
//! database's single writer (measured with `benches/attest.rs`).
//!
//! A result is recorded only together with using up its nonce, in the same transaction: of
//! two results for one nonce, exactly one is recorded; the other is answered `NonceInvalid`
//! and writes nothing.

use super::batch::{Param, Params};
use super::{AttestationResult, AttestationState, Backend, Registry, StoreError};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;

/// One write of the attestation flow.
#[derive(Debug, Clone)]
pub enum AttestJob {
    /// A fresh nonce for a device, with the PCRs asked for.
    Nonce {
        /// The nonce (hex).
        nonce: String,
        /// The device it is issued to.
        device_id: String,
        /// The PCRs asked for (`0,1,2`).
        pcrs: String,
        /// Now (Unix seconds).
        now: i64,
        /// Expiry (Unix seconds).
        expires_at: i64,
    },
    /// A verified (or refused) quote's result, recorded if its nonce is still good (issued
    /// to this device for these PCRs, unused, unexpired) and the facts it was verified with
    /// still hold (the certificate and device in good standing, the AK still bound).
    Result {
        /// The nonce the quote answered.
        nonce: String,
        /// The device.
        device_id: String,
        /// The serial of the certificate the device presented.
        serial: String,
        /// The AK the quote was verified with (`TPMT_PUBLIC`, hex).
        ak_public: String,
        /// The PCRs it was verified for (`0,1,2`).
        pcrs: String,
        /// Now (Unix seconds).
        now: i64,
        /// The verifier's finding.
        result: AttestationResult,
    },
}

/// What a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestWrite {
    /// The nonce is recorded.
    Issued,
    /// The result is recorded; the device's attestation state now.
    Recorded(AttestationState),
    /// The nonce was used, expired, unknown, another device's, or asked for other PCRs:
    /// nothing was written.
    NonceInvalid,
    /// The certificate or the device is revoked, or the AK is no longer the device's:
    /// nothing was written.
    NotCurrent,
}

pub(super) type Job = (AttestJob, oneshot::Sender<Result<AttestWrite, String>>);

/// Starts the attestation writer on a thread of its own (see `batch::spawn_dedicated`).
pub(super) async fn spawn_writer(
    url: String,
    backend: Backend,
    sqlite_writer: Option<Arc<tokio::sync::Mutex<()>>>,
) -> Result<mpsc::Sender<Job>, StoreError> {
    super::batch::spawn_dedicated(
        "attestation writer",
        url,
        backend,
        sqlite_writer,
        MAX_BATCH * 8,
        run_writer,
    )
    .await
}

impl Registry {
    /// Commits `job` through the attestation writer (group commit); returns once it is
    /// durable in the database, or refused.
    pub async fn write_attestation(&self, job: AttestJob) -> Result<AttestWrite, StoreError> {
        let Some(writer) = &self.attest_writer else {
            // Inside the writer (not used there), or a registry without one: commit alone.
            return self
                .commit_attestation_batch(std::slice::from_ref(&job))
                .await?
                .pop()
                .ok_or(StoreError::WriterGone);
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        writer
            .send((job, reply_tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        match reply_rx.await {
            Ok(Ok(write)) => Ok(write),
            Ok(Err(e)) => Err(StoreError::Batch(e)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

async fn run_writer(registry: Registry, mut rx: mpsc::Receiver<Job>) {
    // Results held for a later batch because their device already has one in this batch.
    let mut deferred: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match deferred.pop_front() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let mut batch: Vec<Job> = Vec::new();
        let mut devices: HashSet<String> = HashSet::new();
        let mut later: VecDeque<Job> = VecDeque::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let fresh_device = match &job.0 {
                AttestJob::Result { device_id, .. } => devices.insert(device_id.clone()),
                AttestJob::Nonce { .. } => true,
            };
            if fresh_device {
                batch.push(job);
            } else {
                later.push_back(job);
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = deferred.pop_front().or_else(|| rx.try_recv().ok());
        }
        later.extend(deferred.drain(..));
        deferred = later;

        let jobs: Vec<AttestJob> = batch.iter().map(|(j, _)| j.clone()).collect();
        match registry.commit_attestation_batch(&jobs).await {
            Ok(writes) => {
                for ((_, reply), write) in batch.into_iter().zip(writes) {
                    let _ = reply.send(Ok(write));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = jobs.len(), "attestation commit failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

impl Registry {
    /// Commits `jobs` in one transaction (at most one result per device) and returns one
    /// outcome per job, in order.
    pub async fn commit_attestation_batch(
        &self,
        jobs: &[AttestJob],
    ) -> Result<Vec<AttestWrite>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut nonces = Params::new(self.backend);
        let mut nonce_rows = Vec::new();
        let mut results = Vec::new();
        for job in jobs {
            match job {
                AttestJob::Nonce {
                    nonce,
                    device_id,
                    pcrs,
                    now,
                    expires_at,
                } => nonce_rows.push(nonces.row([
                    Param::Text(nonce.clone()),
                    Param::Text(device_id.clone()),
                    Param::Text(pcrs.clone()),
                    Param::Int(*now),
                    Param::Int(*expires_at),
                ])),
                AttestJob::Result {
                    nonce,
                    device_id,
                    now,
                    result,
                    ..
                } => results.push((nonce, device_id, *now, result)),
            }
        }
        if !nonce_rows.is_empty() {
            let sql = format!(
                "INSERT INTO attest_nonces (nonce, device_id, pcrs, created_at, expires_at) VALUES {}",
                nonce_rows.join(", ")
            );
            nonces.bind(sqlx::query(&sql)).execute(&mut *tx).await?;
        }

        // Use up the nonces of the results, each only by the device it was issued to.
        let mut taken: HashMap<String, String> = HashMap::new();
        let mut current: HashMap<String, (String, String)> = HashMap::new();
        if let Some(&(_, _, now, _)) = results.first() {
            // Placeholders are added in the order they appear (SQLite's are positional).
            let mut p = Params::new(self.backend);
            let used_at = p.add(Param::Int(now));
            let list: Vec<String> = results
                .iter()
                .map(|(nonce, _, _, _)| p.add(Param::Text((*nonce).clone())))
                .collect();
            let unexpired = p.add(Param::Int(now));
            let mut owner = String::new();
            for (nonce, device_id, _, _) in &results {
                let (w, t) = (
                    p.add(Param::Text((*nonce).clone())),
                    p.add(Param::Text((*device_id).clone())),
                );
                owner.push_str(&format!(" WHEN {w} THEN {t}"));
            }
            let sql = format!(
                "UPDATE attest_nonces SET used_at = {used_at} WHERE nonce IN ({}) \
                 AND used_at IS NULL AND expires_at > {unexpired} \
                 AND device_id = CASE nonce{owner} END RETURNING nonce, pcrs",
                list.join(", ")
            );
            let rows: Vec<(String, String)> =
                p.bind_as(sqlx::query_as(&sql)).fetch_all(&mut *tx).await?;
            taken = rows.into_iter().collect();

            // The facts each quote was verified with, as they stand now.
            let mut p = Params::new(self.backend);
            let serials: Vec<String> = jobs
                .iter()
                .filter_map(|j| match j {
                    AttestJob::Result { serial, .. } => Some(p.add(Param::Text(serial.clone()))),
                    AttestJob::Nonce { .. } => None,
                })
                .collect();
            let sql = format!(
                "SELECT k.serial, d.id, d.ak_public FROM certificates k \
                 JOIN devices d ON d.id = k.device_id \
                 WHERE k.serial IN ({}) AND k.revoked_at IS NULL AND d.status = 'active'",
                serials.join(", ")
            );
            let rows: Vec<(String, String, Option<String>)> =
                p.bind_as(sqlx::query_as(&sql)).fetch_all(&mut *tx).await?;
            current = rows
                .into_iter()
                .filter_map(|(serial, id, ak)| Some((serial, (id, ak?))))
                .collect();
        }
        let still_holds = |job: &AttestJob| match job {
            AttestJob::Result {
                device_id,
                serial,
                ak_public,
                ..
            } => current.get(serial) == Some(&(device_id.clone(), ak_public.clone())),
            AttestJob::Nonce { .. } => false,
        };
        let nonce_good = |job: &AttestJob| match job {
            AttestJob::Result { nonce, pcrs, .. } => taken.get(nonce) == Some(pcrs),
            AttestJob::Nonce { .. } => false,
        };
        let winning: HashSet<&str> = jobs
            .iter()
            .filter(|j| still_holds(j) && nonce_good(j))
            .filter_map(|j| match j {
                AttestJob::Result { nonce, .. } => Some(nonce.as_str()),
                AttestJob::Nonce { .. } => None,
            })
            .collect();
        let winners: Vec<_> = results
            .iter()
            .filter(|(nonce, _, _, _)| winning.contains(nonce.as_str()))
            .collect();

        let mut states: HashMap<String, AttestationState> = HashMap::new();
        if !winners.is_empty() {
            // Each device's state before, for the audit of changes.
            let mut p = Params::new(self.backend);
            let ids: Vec<String> = winners
                .iter()
                .map(|(_, id, _, _)| p.add(Param::Text((*id).clone())))
                .collect();
            let sql = format!(
                "SELECT id, attestation FROM devices WHERE id IN ({})",
                ids.join(", ")
            );
            let before: HashMap<String, String> = p
                .bind_as(sqlx::query_as::<_, (String, String)>(&sql))
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();

            let mut history = Params::new(self.backend);
            let mut history_rows = Vec::new();
            let mut audit = Params::new(self.backend);
            let mut audit_rows = Vec::new();
            // (device, time, new state, reason when quarantined) for the device update.
            let mut changes: Vec<(String, i64, AttestationState, Option<String>)> = Vec::new();
            for (_, id, now, result) in &winners {
                let effect = result.effect();
                let (state, outcome, reason, set) = (
                    effect.state,
                    effect.outcome,
                    effect.reason,
                    effect.reference_set,
                );
                history_rows.push(history.row([
                    Param::Text((*id).clone()),
                    Param::Int(*now),
                    Param::Text(outcome.into()),
                    Param::Text(reason.clone()),
                    Param::OptText(set.clone()),
                ]));
                // The history has every result; the audit log has the changes of state.
                if before.get(*id).map(String::as_str) != Some(state.as_str()) {
                    let action = if outcome == "pass" {
                        "device.attested"
                    } else {
                        "device.quarantined"
                    };
                    audit_rows.push(audit.row([
                        Param::Int(*now),
                        Param::Text("attestor".into()),
                        Param::Text(action.into()),
                        Param::Text((*id).clone()),
                        Param::Text(json!({"reason": reason, "reference_set": set}).to_string()),
                    ]));
                }
                let quarantine_reason = (outcome == "fail").then_some(reason);
                changes.push(((*id).clone(), *now, state, quarantine_reason));
                states.insert((*id).clone(), state);
            }

            // One UPDATE for every device; placeholders in the order they appear.
            let mut p = Params::new(self.backend);
            let mut state_case = String::new();
            for (id, _, state, _) in &changes {
                let (w, v) = (
                    p.add(Param::Text(id.clone())),
                    p.add(Param::Text(state.as_str().into())),
                );
                state_case.push_str(&format!(" WHEN {w} THEN {v}"));
            }
            let mut last_case = String::new();
            for (id, now, state, _) in &changes {
                if *state == AttestationState::Active {
                    let (w, v) = (p.add(Param::Text(id.clone())), p.add(Param::Int(*now)));
                    last_case.push_str(&format!(" WHEN {w} THEN {v}"));
                }
            }
            let mut reason_case = String::new();
            for (id, _, _, reason) in &changes {
                let (w, v) = (
                    p.add(Param::Text(id.clone())),
                    p.add(Param::OptText(reason.clone())),
                );
                reason_case.push_str(&format!(" WHEN {w} THEN {v}"));
            }
            let last = if last_case.is_empty() {
                "last_attested".to_owned()
            } else {
                format!("CASE id{last_case} ELSE last_attested END")
            };
            let at = p.add(Param::Int(changes.first().map_or(0, |c| c.1)));
            let ids: Vec<String> = changes
                .iter()
                .map(|(id, _, _, _)| p.add(Param::Text(id.clone())))
                .collect();
            let sql = format!(
                "UPDATE devices SET attestation = CASE id{state_case} END, last_attested = {last}, \
                 attestation_reason = CASE id{reason_case} END, updated_at = {at} WHERE id IN ({})",
                ids.join(", ")
            );
            p.bind(sqlx::query(&sql)).execute(&mut *tx).await?;
            let sql = format!(
                "INSERT INTO attestations (device_id, at, outcome, reason, reference_set) VALUES {}",
                history_rows.join(", ")
            );
            history.bind(sqlx::query(&sql)).execute(&mut *tx).await?;
            if !audit_rows.is_empty() {
                let sql = format!(
                    "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES {}",
                    audit_rows.join(", ")
                );
                audit.bind(sqlx::query(&sql)).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(jobs
            .iter()
            .map(|job| match job {
                AttestJob::Nonce { .. } => AttestWrite::Issued,
                AttestJob::Result {
                    nonce, device_id, ..
                } => match states.get(device_id) {
                    Some(state) if winning.contains(nonce.as_str()) => {
                        AttestWrite::Recorded(*state)
                    }
                    _ if !still_holds(job) => AttestWrite::NotCurrent,
                    _ => AttestWrite::NonceInvalid,
                },
            })
            .collect())
    }
}
