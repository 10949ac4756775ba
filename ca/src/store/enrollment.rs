//! Bootstrap tokens, enrollment and renewal: the writes that create identities.

use super::audit::append;
use super::batch::{EnrollJob, Enrollments};
use super::group_commit;
use super::{Registry, StoreError};
use serde_json::json;
use std::collections::BTreeMap;

/// A bootstrap token to record when it is created.
#[derive(Debug, Clone)]
pub struct NewBootstrapToken {
    /// Token id (the JWT `jti`).
    pub jti: String,
    /// Zone it enrolls into.
    pub zone: String,
    /// Labels for the device.
    pub labels: BTreeMap<String, String>,
    /// Device class.
    pub device_class: Option<String>,
    /// The existing device it re-enrolls, if any.
    pub reenroll_device: Option<String>,
    /// Who created it (`operator:<sub>`).
    pub created_by: String,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
}

/// A device to register at enrollment.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Device id.
    pub id: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Zone.
    pub zone: String,
    /// Device class.
    pub device_class: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A certificate to record.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
    /// The key-agreement certificate issued with it, if the device asked for one.
    pub key_agreement: Option<super::NewKeyAgreement>,
}

/// Why an enrollment was refused by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    /// The token was already used.
    #[error("bootstrap token has already been used")]
    TokenUsed,
    /// The token has expired.
    #[error("bootstrap token has expired")]
    TokenExpired,
    /// The registry has no such token.
    #[error("bootstrap token is not known")]
    TokenUnknown,
}

/// Why a renewal was refused by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RenewRefusal {
    /// No device holds the presented certificate.
    #[error("certificate is not known to the registry")]
    UnknownCertificate,
    /// The device is revoked.
    #[error("device is revoked")]
    DeviceRevoked,
    /// The presented certificate is revoked.
    #[error("certificate is revoked")]
    CertificateRevoked,
    /// The device is quarantined after a failed attestation.
    #[error("device is quarantined after a failed attestation; an operator must release it or it must attest again")]
    DeviceQuarantined,
    /// The device has not attested within the attestation period.
    #[error("device has not attested within the attestation period; it must attest again")]
    DeviceStale,
}

impl Registry {
    /// Records a new bootstrap token and its audit record.
    pub(crate) async fn create_bootstrap_token(
        &self,
        t: &NewBootstrapToken,
    ) -> Result<(), StoreError> {
        let labels =
            serde_json::to_string(&t.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO bootstrap_tokens (jti, zone, labels, device_class, created_by, created_at, \
             expires_at, reenroll_device) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.jti)
        .bind(&t.zone)
        .bind(labels)
        .bind(t.device_class.clone())
        .bind(&t.created_by)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.reenroll_device.clone())
        .execute(&mut *tx)
        .await?;
        append(
            &mut tx,
            t.created_at,
            &t.created_by,
            "token.created",
            &t.jti,
            &json!({"zone": t.zone, "labels": t.labels, "device_class": t.device_class,
                    "expires_at": t.expires_at, "reenroll_device": t.reenroll_device}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Consumes bootstrap token `jti` and registers `device` with its first certificate, in
    /// one transaction (committed together with other enrollments queued at the same time,
    /// see `batch`). The token must be unused and not expired more than `skew` seconds
    /// ago. Of two concurrent enrollments with one token, exactly one succeeds; a refused
    /// enrollment writes nothing.
    pub async fn enroll(
        &self,
        jti: &str,
        device: &NewDevice,
        cert: &NewCertificate,
        now: i64,
        skew: i64,
    ) -> Result<Result<(), EnrollRefusal>, StoreError> {
        let job = EnrollJob {
            jti: jti.to_owned(),
            device: device.clone(),
            cert: cert.clone(),
            now,
            skew,
        };
        match &self.writers {
            Some(writers) => writers.enrollments.submit(job).await,
            None => group_commit::commit_alone::<Enrollments>(self, job).await,
        }
    }

    /// Records a renewed certificate for the device that holds certificate `old_serial`.
    /// Refused if that certificate or its device is revoked or unknown, or the device is
    /// quarantined or stale: checked here, in the transaction that writes, so that a device
    /// quarantined after the handler's early check gets no certificate. Returns the device id.
    pub async fn renew(
        &self,
        old_serial: &str,
        cert: &NewCertificate,
        now: i64,
    ) -> Result<Result<String, RenewRefusal>, StoreError> {
        let mut tx = self.begin_write().await?;
        // Begin with a write (see the module docs): point the device of the old certificate at
        // the new one, only while both are in good standing.
        let touched = sqlx::query(
            "UPDATE devices SET updated_at = $1, current_serial = $3, current_not_after = $4 \
             WHERE status = 'active' AND attestation NOT IN ('quarantined', 'stale') AND id = \
             (SELECT device_id FROM certificates WHERE serial = $2 AND revoked_at IS NULL)",
        )
        .bind(now)
        .bind(old_serial)
        .bind(&cert.serial)
        .bind(cert.not_after)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row: Option<(String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT d.id, d.status, d.attestation, c.revoked_at FROM certificates c \
             JOIN devices d ON d.id = c.device_id WHERE c.serial = $1",
        )
        .bind(old_serial)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match row {
            None => Err(RenewRefusal::UnknownCertificate),
            Some((_, status, _, _)) if status != "active" => Err(RenewRefusal::DeviceRevoked),
            Some((_, _, _, Some(_))) => Err(RenewRefusal::CertificateRevoked),
            Some((_, _, attestation, _)) if attestation == "quarantined" => {
                Err(RenewRefusal::DeviceQuarantined)
            }
            Some((_, _, attestation, _)) if attestation == "stale" => {
                Err(RenewRefusal::DeviceStale)
            }
            Some((id, _, _, None)) if touched == 1 => Ok(id),
            Some(_) => Err(RenewRefusal::UnknownCertificate),
        };
        let device_id = match outcome {
            Ok(id) => id,
            Err(refusal) => {
                tx.rollback().await?;
                return Ok(Err(refusal));
            }
        };
        insert_certificate(&mut tx, &device_id, cert, now).await?;
        append(
            &mut tx,
            now,
            &format!("device:{device_id}"),
            "certificate.renewed",
            &device_id,
            &json!({"old_serial": old_serial, "serial": cert.serial}),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(device_id))
    }
}

pub(super) async fn insert_certificate(
    conn: &mut sqlx::AnyConnection,
    device_id: &str,
    cert: &NewCertificate,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO certificates (serial, device_id, not_before, not_after, issued_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&cert.serial)
    .bind(device_id)
    .bind(cert.not_before)
    .bind(cert.not_after)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if let Some(ka) = &cert.key_agreement {
        super::peers::insert_key_agreement(conn, device_id, &cert.serial, cert.not_after, ka, now)
            .await?;
    }
    Ok(())
}
