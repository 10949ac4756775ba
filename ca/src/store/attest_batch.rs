//! Group commit for attestation: quote results recorded by a whole fleet go to one writer
//! task that commits whatever has queued in one transaction, then answers each waiting
//! request. Every device attests every 30 minutes, so a large fleet's traffic is a steady
//! stream of small writes; one transaction per write would serialize them on the database's
//! single writer (measured with `benches/attest.rs`).
//!
//! A result is recorded with its nonce in the attestation history, whose nonce column is
//! unique: that uses the nonce up. Of two results for one nonce, exactly one is recorded;
//! the other is answered `NonceUsed` and writes nothing. (Nonces are issued without a write,
//! see `crate::nonce`.)

use super::batch::{Param, Params};
use super::{AttestationResult, AttestationState, Backend, Registry, StoreError};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What a recorded result does to its device: the time, the new state, and the reason when
/// quarantined.
type Effect = (i64, AttestationState, Option<String>);

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestWrite {
    /// The result is recorded; the device's attestation state now.
    Recorded(AttestationState),
    /// A result for this nonce is recorded already: nothing was written.
    NonceUsed,
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
    /// Records `job` through the attestation writer (group commit); returns once it is
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
            if devices.insert(job.0.device_id.clone()) {
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
    /// Records `jobs` in one transaction (at most one per device) and returns one outcome
    /// per job, in order.
    pub async fn commit_attestation_batch(
        &self,
        jobs: &[AttestJob],
    ) -> Result<Vec<AttestWrite>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;

        // The facts each quote was verified with, as they stand now, and each device's state
        // before (the audit log records changes of state).
        let mut p = Params::new(self.backend);
        let serials: Vec<String> = jobs
            .iter()
            .map(|job| p.add(Param::Text(job.serial.clone())))
            .collect();
        let sql = format!(
            "SELECT k.serial, d.id, d.ak_public, d.attestation FROM certificates k \
             JOIN devices d ON d.id = k.device_id \
             WHERE k.serial IN ({}) AND k.revoked_at IS NULL AND d.status = 'active'",
            serials.join(", ")
        );
        let rows: Vec<(String, String, Option<String>, String)> =
            p.bind_as(sqlx::query_as(&sql)).fetch_all(&mut *tx).await?;
        let current: HashMap<String, (String, String, String)> = rows
            .into_iter()
            .filter_map(|(serial, id, ak, state)| Some((serial, (id, ak?, state))))
            .collect();
        let still_holds = |job: &AttestJob| {
            current
                .get(&job.serial)
                .is_some_and(|(id, ak, _)| *id == job.device_id && *ak == job.ak_public)
        };
        let before: HashMap<&str, &str> = current
            .values()
            .map(|(id, _, state)| (id.as_str(), state.as_str()))
            .collect();

        // The history rows of the results whose facts hold. The nonce column is unique: a
        // nonce recorded already inserts nothing, and its result is not recorded.
        let holding: Vec<_> = jobs
            .iter()
            .filter(|job| still_holds(job))
            .map(|job| (job, job.result.effect()))
            .collect();
        let mut recorded: HashSet<String> = HashSet::new();
        if !holding.is_empty() {
            let mut history = Params::new(self.backend);
            let rows: Vec<String> = holding
                .iter()
                .map(|(job, effect)| {
                    history.row([
                        Param::Text(job.device_id.clone()),
                        Param::Int(job.now),
                        Param::Text(effect.outcome.into()),
                        Param::Text(effect.reason.clone()),
                        Param::OptText(effect.reference_set.clone()),
                        Param::Text(job.nonce.clone()),
                    ])
                })
                .collect();
            let sql = format!(
                "INSERT INTO attestations (device_id, at, outcome, reason, reference_set, nonce) \
                 VALUES {} ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
                rows.join(", ")
            );
            let inserted: Vec<(String,)> = history
                .bind_as(sqlx::query_as(&sql))
                .fetch_all(&mut *tx)
                .await?;
            recorded = inserted.into_iter().map(|(nonce,)| nonce).collect();
        }
        // One winner per nonce (the writer never batches two results of one device, and a
        // nonce belongs to one device; this holds even if that changed).
        let mut winning: HashSet<&str> = HashSet::new();
        let winners: Vec<_> = holding
            .into_iter()
            .filter(|(job, _)| recorded.contains(&job.nonce) && winning.insert(job.nonce.as_str()))
            .collect();

        let mut states: HashMap<&str, AttestationState> = HashMap::new();
        if !winners.is_empty() {
            let mut audit = Params::new(self.backend);
            let mut audit_rows = Vec::new();
            // One UPDATE per group of devices with the same new state, time and reason
            // (in a steady fleet: all the passes of a batch, in one statement); plain
            // statements without a CASE per device, which SQLite compiles in time quadratic
            // in the batch.
            let mut groups: Vec<(Effect, Vec<&str>)> = Vec::new();
            for (job, effect) in winners {
                let (state, outcome, reason, set) = (
                    effect.state,
                    effect.outcome,
                    effect.reason,
                    effect.reference_set,
                );
                if before.get(job.device_id.as_str()).copied() != Some(state.as_str()) {
                    let action = if outcome == "pass" {
                        "device.attested"
                    } else {
                        "device.quarantined"
                    };
                    audit_rows.push(audit.row([
                        Param::Int(job.now),
                        Param::Text("attestor".into()),
                        Param::Text(action.into()),
                        Param::Text(job.device_id.clone()),
                        Param::Text(json!({"reason": reason, "reference_set": set}).to_string()),
                    ]));
                }
                states.insert(&job.device_id, state);
                let key = (job.now, state, (outcome == "fail").then_some(reason));
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, ids)) => ids.push(&job.device_id),
                    None => groups.push((key, vec![&job.device_id])),
                }
            }
            for ((now, state, reason), ids) in groups {
                // Placeholders are added in the order they appear (SQLite's are positional).
                let mut p = Params::new(self.backend);
                let state_param = p.add(Param::Text(state.as_str().into()));
                // Only a pass moves the time of the last passing attestation.
                let last = if state == AttestationState::Active {
                    p.add(Param::Int(now))
                } else {
                    "last_attested".to_owned()
                };
                let reason_param = p.add(Param::OptText(reason));
                let at = p.add(Param::Int(now));
                let list: Vec<String> = ids
                    .iter()
                    .map(|id| p.add(Param::Text((*id).to_owned())))
                    .collect();
                let sql = format!(
                    "UPDATE devices SET attestation = {state_param}, last_attested = {last}, \
                     attestation_reason = {reason_param}, updated_at = {at} WHERE id IN ({})",
                    list.join(", ")
                );
                p.bind(sqlx::query(&sql)).execute(&mut *tx).await?;
            }
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
            .map(|job| match states.get(job.device_id.as_str()) {
                Some(state) if winning.contains(job.nonce.as_str()) => {
                    AttestWrite::Recorded(*state)
                }
                _ if !still_holds(job) => AttestWrite::NotCurrent,
                _ => AttestWrite::NonceUsed,
            })
            .collect())
    }
}
