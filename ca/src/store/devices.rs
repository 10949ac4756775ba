//! Reading devices and revoking them.

use super::audit::append;
use super::{col, Registry, StoreError};
use serde_json::json;
use sqlx::any::AnyRow;
pub use vouch_proto::device::{AttestationState, DeviceRecord, DeviceStatus};

/// Filter and page for [`Registry::list_devices`].
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only this zone.
    pub zone: Option<String>,
    /// Only this status.
    pub status: Option<DeviceStatus>,
    /// Only ids after this one (the cursor of the previous page).
    pub after: Option<String>,
    /// Page size.
    pub limit: i64,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Revoked now; these certificate serials were revoked with it.
    Revoked(Vec<String>),
    /// Was already revoked; nothing changed.
    AlreadyRevoked,
    /// No such device.
    NotFound,
}

pub(super) const DEVICE_COLUMNS: &str = "d.id, d.spiffe_id, d.zone, d.device_class, d.labels, d.status, \
    d.created_at, d.updated_at, d.revoked_at, d.revocation_reason, d.current_serial, d.current_not_after, \
    d.attestation, d.last_attested, d.attestation_reason, d.ek_sha256";

pub(super) fn device_from_row(row: &AnyRow) -> Result<DeviceRecord, StoreError> {
    let labels: String = col(row, "labels")?;
    let status: String = col(row, "status")?;
    let attestation: String = col(row, "attestation")?;
    Ok(DeviceRecord {
        id: col(row, "id")?,
        spiffe_id: col(row, "spiffe_id")?,
        zone: col(row, "zone")?,
        device_class: col(row, "device_class")?,
        labels: serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        status: DeviceStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("device status `{status}`")))?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        revoked_at: col(row, "revoked_at")?,
        revocation_reason: col(row, "revocation_reason")?,
        current_serial: col(row, "current_serial")?,
        current_not_after: col(row, "current_not_after")?,
        attestation: AttestationState::parse(&attestation)
            .ok_or_else(|| StoreError::Corrupt(format!("attestation state `{attestation}`")))?,
        last_attested: col(row, "last_attested")?,
        attestation_reason: col(row, "attestation_reason")?,
        ek_sha256: col(row, "ek_sha256")?,
    })
}

impl Registry {
    /// One device by id.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// The device that holds certificate `serial`, and whether that certificate itself is
    /// revoked (a device revocation revokes every certificate of the device; a re-enrollment
    /// revokes the certificates it supersedes while the device stays active).
    pub(crate) async fn device_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<(DeviceRecord, bool)>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS}, k.revoked_at AS certificate_revoked_at \
             FROM devices d JOIN certificates k ON k.device_id = d.id WHERE k.serial = $1"
        );
        let row = sqlx::query(&sql)
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let revoked: Option<i64> = col(&row, "certificate_revoked_at")?;
        Ok(Some((device_from_row(&row)?, revoked.is_some())))
    }

    /// A page of devices ordered by id.
    pub(crate) async fn list_devices(
        &self,
        filter: &DeviceFilter,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut clauses = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if let Some(zone) = &filter.zone {
            binds.push(zone.clone());
            clauses.push(format!("d.zone = ${}", binds.len()));
        }
        if let Some(status) = filter.status {
            binds.push(status.as_str().to_owned());
            clauses.push(format!("d.status = ${}", binds.len()));
        }
        if let Some(after) = &filter.after {
            binds.push(after.clone());
            clauses.push(format!("d.id > ${}", binds.len()));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d {where_clause} ORDER BY d.id LIMIT ${}",
            binds.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.bind(filter.limit).fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Revokes a device and all its certificates, with an audit record, in one transaction.
    pub(crate) async fn revoke_device(
        &self,
        id: &str,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<RevokeOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE devices SET status = 'revoked', revoked_at = $1, revocation_reason = $2, updated_at = $1 \
             WHERE id = $3 AND status <> 'revoked'",
        )
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Ok(if exists.is_some() {
                RevokeOutcome::AlreadyRevoked
            } else {
                RevokeOutcome::NotFound
            });
        }
        let serials: Vec<(String,)> = sqlx::query_as(
            "SELECT serial FROM certificates WHERE device_id = $1 AND revoked_at IS NULL ORDER BY serial",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
             WHERE device_id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let serials: Vec<String> = serials.into_iter().map(|(s,)| s).collect();
        append(
            &mut tx,
            now,
            actor,
            "device.revoked",
            id,
            &json!({"reason": reason, "serials": serials}),
        )
        .await?;
        tx.commit().await?;
        Ok(RevokeOutcome::Revoked(serials))
    }
}
