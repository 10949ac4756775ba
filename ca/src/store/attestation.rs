//! Attestation state in the registry: recording results (a pass makes a device `active`, a
//! failure `quarantined`), the stale sweep that runs once per period across all replicas,
//! an operator's release from quarantine, and the per-device history. Every change writes
//! its history row and audit record in the same transaction.

use super::audit::append;
use super::devices::{device_from_row, DEVICE_COLUMNS};
use super::{col, DeviceRecord, Registry, StoreError};
use serde_json::json;
pub use vouch_proto::device::AttestationRecord;

/// The verifier's finding for one quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationResult {
    /// Every check passed; `reference_set` is the accepted set it met.
    Pass {
        /// The accepted reference set.
        reference_set: String,
    },
    /// A check failed (or anything went wrong: fail closed).
    Fail {
        /// Why.
        reason: String,
    },
}

/// What a result does to a device: its new state, the history outcome, the reason in
/// words, and the reference set a pass met.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ResultEffect {
    pub(super) state: super::AttestationState,
    pub(super) outcome: &'static str,
    pub(super) reason: String,
    pub(super) reference_set: Option<String>,
}

impl AttestationResult {
    pub(super) fn effect(&self) -> ResultEffect {
        match self {
            Self::Pass { reference_set } => ResultEffect {
                state: super::AttestationState::Active,
                outcome: "pass",
                reason: format!("passed with reference set `{reference_set}`"),
                reference_set: Some(reference_set.clone()),
            },
            Self::Fail { reason } => ResultEffect {
                state: super::AttestationState::Quarantined,
                outcome: "fail",
                reason: reason.clone(),
                reference_set: None,
            },
        }
    }
}

/// What a sweep call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// This replica ran the period's sweep and marked this many devices stale.
    Ran {
        /// The period swept.
        period: i64,
        /// Devices now stale.
        stale: u64,
    },
    /// Another replica (or an earlier call) already ran this period's sweep.
    AlreadyRun {
        /// The period.
        period: i64,
    },
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Released; the device as it is now.
    Released(Box<DeviceRecord>),
    /// The device is not quarantined; nothing changed.
    NotQuarantined,
    /// No such device.
    NotFound,
}

impl Registry {
    /// Records the result of a verified (or refused) quote for `device_id`. Returns the device
    /// after the change, or `None` if there is no such device.
    pub async fn record_attestation(
        &self,
        device_id: &str,
        at: i64,
        result: &AttestationResult,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let effect = result.effect();
        let (state, outcome, reason, set) = (
            effect.state.as_str(),
            effect.outcome,
            effect.reason,
            effect.reference_set,
        );
        let last = (outcome == "pass").then_some(at);
        let changed = sqlx::query(
            "UPDATE devices SET attestation = $1, \
             last_attested = COALESCE($2, last_attested), \
             attestation_reason = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(state)
        .bind(last)
        .bind(if outcome == "pass" {
            None
        } else {
            Some(reason.clone())
        })
        .bind(at)
        .bind(device_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO attestations (device_id, at, outcome, reason, reference_set) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(device_id)
        .bind(at)
        .bind(outcome)
        .bind(&reason)
        .bind(&set)
        .execute(&mut *tx)
        .await?;
        let action = if outcome == "pass" {
            "device.attested"
        } else {
            "device.quarantined"
        };
        append(
            &mut tx,
            at,
            "attestor",
            action,
            device_id,
            &json!({"reason": reason, "reference_set": set}),
        )
        .await?;
        let device = self.device_in(&mut tx, device_id).await?;
        tx.commit().await?;
        Ok(device)
    }

    async fn device_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        id: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(conn).await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Runs the stale sweep for the period that `now` falls in, unless some replica already
    /// has: devices whose last passing attestation is older than `period + grace` become
    /// `stale`, and so do TPM devices that have not passed a first attestation within
    /// `period + grace` of their TPM binding. The claim and the sweep are one transaction, so a period is swept exactly
    /// once across every replica sharing the database.
    pub async fn sweep_stale(
        &self,
        now: i64,
        period_secs: i64,
        grace_secs: i64,
        replica: &str,
    ) -> Result<SweepOutcome, StoreError> {
        let period = now.div_euclid(period_secs.max(1));
        let cutoff = now.saturating_sub(period_secs.saturating_add(grace_secs));
        let mut tx = self.begin_write().await?;
        // INVARIANT: the primary key on `period` lets exactly one replica insert this row.
        let claimed = sqlx::query(
            "INSERT INTO sweep_claims (period, claimed_by, claimed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (period) DO NOTHING",
        )
        .bind(period)
        .bind(replica)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            tx.rollback().await?;
            return Ok(SweepOutcome::AlreadyRun { period });
        }
        let reason =
            format!("no passing attestation within {period_secs} s plus {grace_secs} s of grace");
        sqlx::query(
            "INSERT INTO attestations (device_id, at, outcome, reason, reference_set) \
             SELECT id, $1, 'stale', $2, NULL FROM devices \
             WHERE (attestation = 'active' AND last_attested < $3) \
                OR (attestation = 'none' AND tpm_bound_at < $3)",
        )
        .bind(now)
        .bind(&reason)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let stale = sqlx::query(
            "UPDATE devices SET attestation = 'stale', attestation_reason = $1, updated_at = $2 \
             WHERE (attestation = 'active' AND last_attested < $3) \
                OR (attestation = 'none' AND tpm_bound_at < $3)",
        )
        .bind(&reason)
        .bind(now)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The audit log records changes: a sweep that changed nothing leaves only its claim.
        if stale > 0 {
            append(
                &mut tx,
                now,
                &format!("sweep:{replica}"),
                "attestation.sweep",
                &period.to_string(),
                &json!({"stale": stale, "cutoff": cutoff}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(SweepOutcome::Ran { period, stale })
    }

    /// Releases a quarantined device (an operator's decision): it is `active` again until
    /// its next quote or the sweep says otherwise.
    pub(crate) async fn release_device(
        &self,
        device_id: &str,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<ReleaseOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE devices SET attestation = 'active', attestation_reason = NULL, \
             last_attested = $1, updated_at = $1 WHERE id = $2 AND attestation = 'quarantined'",
        )
        .bind(now)
        .bind(device_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            let exists = self.device_in(&mut tx, device_id).await?.is_some();
            tx.rollback().await?;
            return Ok(if exists {
                ReleaseOutcome::NotQuarantined
            } else {
                ReleaseOutcome::NotFound
            });
        }
        sqlx::query(
            "INSERT INTO attestations (device_id, at, outcome, reason, reference_set) \
             VALUES ($1, $2, 'released', $3, NULL)",
        )
        .bind(device_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        append(
            &mut tx,
            now,
            actor,
            "device.released",
            device_id,
            &json!({"reason": reason}),
        )
        .await?;
        let device = self.device_in(&mut tx, device_id).await?;
        tx.commit().await?;
        Ok(device.map_or(ReleaseOutcome::NotFound, |d| {
            ReleaseOutcome::Released(Box::new(d))
        }))
    }

    /// The newest `limit` history entries of a device, newest first.
    pub async fn attestation_history(
        &self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<AttestationRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, outcome, reason, reference_set FROM attestations \
             WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttestationRecord {
                    id: col(r, "id")?,
                    at: col(r, "at")?,
                    outcome: col(r, "outcome")?,
                    reason: col(r, "reason")?,
                    reference_set: col(r, "reference_set")?,
                })
            })
            .collect()
    }
}
