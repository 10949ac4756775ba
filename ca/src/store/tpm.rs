//! TPM devices: credential activations at enrollment (binding the EK and AK to a new or
//! re-enrolled device), and the keys they bound. (Attestation nonces: `attest_batch`.)

use super::audit::append;
use super::devices::{device_from_row, DeviceRecord, DEVICE_COLUMNS};
use super::enrollment::{insert_certificate, NewCertificate, NewDevice};
use super::{col, EnrollRefusal, Registry, StoreError};
use serde_json::json;
use subtle::ConstantTimeEq;

/// A pending credential activation, recorded when the server makes the credential.
#[derive(Debug, Clone)]
pub struct NewActivation {
    /// Activation id (random hex).
    pub id: String,
    /// The bootstrap token it belongs to.
    pub token_jti: String,
    /// The EK's public area.
    pub ek_public: Vec<u8>,
    /// The AK's public area.
    pub ak_public: Vec<u8>,
    /// SHA-256 of the secret wrapped for the TPM.
    pub secret_sha256: [u8; 32],
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
}

/// The TPM keys bound to a device at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmKeys {
    /// The EK's public area.
    pub ek_public: Vec<u8>,
    /// The AK's public area.
    pub ak_public: Vec<u8>,
}

/// What a TPM enrollment asks of the registry, beyond a plain one.
#[derive(Debug, Clone)]
pub struct TpmEnrollment<'a> {
    /// The bootstrap token id.
    pub jti: &'a str,
    /// The activation the device answered.
    pub activation_id: &'a str,
    /// The secret the device recovered with `TPM2_ActivateCredential`.
    pub secret: &'a [u8],
    /// The device to register (ignored, but for its id, when re-enrolling).
    pub device: &'a NewDevice,
    /// The existing device the token re-enrolls, if it names one.
    pub reenroll: Option<&'a str>,
    /// Its first (or next) certificate.
    pub cert: &'a NewCertificate,
    /// Now (Unix seconds).
    pub now: i64,
    /// Clock skew tolerated on the token's expiry, seconds.
    pub skew: i64,
}

/// Why a TPM enrollment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TpmEnrollRefusal {
    /// The bootstrap token cannot be used.
    #[error("{0}")]
    Token(EnrollRefusal),
    /// Unknown, used or expired activation, another token's, or the wrong secret.
    #[error("credential activation failed: unknown, used, expired or wrong secret")]
    ActivationInvalid,
    /// The re-enrolled device is bound to another EK.
    #[error("the device is bound to another endorsement key")]
    EkMismatch,
    /// The EK is bound to another device.
    #[error("this endorsement key is already enrolled as another device")]
    EkAlreadyEnrolled,
    /// The device to re-enroll does not exist.
    #[error("the device to re-enroll does not exist")]
    DeviceUnknown,
    /// The device to re-enroll is revoked.
    #[error("the device to re-enroll is revoked")]
    DeviceRevoked,
    /// The device to re-enroll has no bound EK (it was enrolled without a TPM): no TPM can
    /// prove it is that device.
    #[error("the device to re-enroll was enrolled without a TPM; it cannot be re-enrolled")]
    DeviceWithoutTpm,
    /// The token's zone is not the device's: a re-enrollment keeps the device's zone.
    #[error("the re-enrollment token names another zone than the device's")]
    ZoneMismatch,
}

pub use vouch_attestor::endorsement::ek_fingerprint;

fn unhex(column: &str, value: &str) -> Result<Vec<u8>, StoreError> {
    hex::decode(value).map_err(|_| StoreError::Corrupt(format!("{column} is not hex")))
}

impl Registry {
    /// Records a pending credential activation.
    pub async fn create_activation(&self, a: &NewActivation) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Expired activations are of no use to anyone: drop them as new ones come.
        sqlx::query("DELETE FROM tpm_activations WHERE expires_at < $1")
            .bind(a.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tpm_activations (id, token_jti, ek_sha256, ek_public, ak_public, \
             secret_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&a.id)
        .bind(&a.token_jti)
        .bind(ek_fingerprint(&a.ek_public))
        .bind(hex::encode(&a.ek_public))
        .bind(hex::encode(&a.ak_public))
        .bind(hex::encode(a.secret_sha256))
        .bind(a.created_at)
        .bind(a.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The device an EK is bound to, if any.
    pub(crate) async fn device_of_ek(
        &self,
        ek_public: &[u8],
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT id FROM devices WHERE ek_sha256 = $1")
            .bind(ek_fingerprint(ek_public))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id,)| id))
    }

    /// Whether bootstrap token `jti` is recorded and unused (it may still be expired).
    pub(crate) async fn token_unused(&self, jti: &str) -> Result<Option<bool>, StoreError> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT used_at FROM bootstrap_tokens WHERE jti = $1")
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(used,)| used.is_none()))
    }

    /// Completes a TPM enrollment in one transaction: uses up the activation (after checking
    /// the secret) and the token, then registers the device with its EK and AK, or, for a
    /// token that re-enrolls a device, rebinds that device's AK (its EK must be the one
    /// bound), supersedes its certificates and resets its attestation. A refusal writes
    /// nothing. Returns the device id.
    pub async fn enroll_tpm(
        &self,
        e: &TpmEnrollment<'_>,
    ) -> Result<Result<String, TpmEnrollRefusal>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, String, String, String)> = sqlx::query_as(
            "UPDATE tpm_activations SET used_at = $1 \
             WHERE id = $2 AND token_jti = $3 AND used_at IS NULL AND expires_at > $1 \
             RETURNING ek_sha256, ek_public, ak_public, secret_sha256",
        )
        .bind(e.now)
        .bind(e.activation_id)
        .bind(e.jti)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((ek_sha256, ek_public, ak_public, secret_sha256)) = row else {
            tx.rollback().await?;
            return Ok(Err(TpmEnrollRefusal::ActivationInvalid));
        };
        let presented = ring::digest::digest(&ring::digest::SHA256, e.secret);
        let expected = unhex("secret_sha256", &secret_sha256)?;
        if !bool::from(presented.as_ref().ct_eq(expected.as_slice())) {
            tx.rollback().await?;
            return Ok(Err(TpmEnrollRefusal::ActivationInvalid));
        }
        let device_id = e.reenroll.unwrap_or(&e.device.id);
        let used = sqlx::query(
            "UPDATE bootstrap_tokens SET used_at = $1, device_id = $2 \
             WHERE jti = $3 AND used_at IS NULL AND expires_at > $4",
        )
        .bind(e.now)
        .bind(device_id)
        .bind(e.jti)
        .bind(e.now.saturating_sub(e.skew))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if used != 1 {
            let row: Option<(Option<i64>,)> =
                sqlx::query_as("SELECT used_at FROM bootstrap_tokens WHERE jti = $1")
                    .bind(e.jti)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(Err(TpmEnrollRefusal::Token(match row {
                None => EnrollRefusal::TokenUnknown,
                Some((Some(_),)) => EnrollRefusal::TokenUsed,
                Some((None,)) => EnrollRefusal::TokenExpired,
            })));
        }
        let holder: Option<(String,)> =
            sqlx::query_as("SELECT id FROM devices WHERE ek_sha256 = $1 AND id <> $2")
                .bind(&ek_sha256)
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        if holder.is_some() {
            tx.rollback().await?;
            return Ok(Err(TpmEnrollRefusal::EkAlreadyEnrolled));
        }
        let actor = format!("bootstrap-token:{}", e.jti);
        if let Some(id) = e.reenroll {
            let current: Option<(String, Option<String>, String)> =
                sqlx::query_as("SELECT status, ek_sha256, zone FROM devices WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let refusal = match &current {
                None => Some(TpmEnrollRefusal::DeviceUnknown),
                Some((status, _, _)) if status != "active" => Some(TpmEnrollRefusal::DeviceRevoked),
                Some((_, None, _)) => Some(TpmEnrollRefusal::DeviceWithoutTpm),
                Some((_, Some(bound), _)) if *bound != ek_sha256 => {
                    Some(TpmEnrollRefusal::EkMismatch)
                }
                // The certificate was made with the token's zone: it must be the device's.
                Some((_, _, zone)) if *zone != e.device.zone => {
                    Some(TpmEnrollRefusal::ZoneMismatch)
                }
                Some(_) => None,
            };
            if let Some(refusal) = refusal {
                tx.rollback().await?;
                return Ok(Err(refusal));
            }
            sqlx::query(
                "UPDATE certificates SET revoked_at = $1, revocation_reason = 'superseded by re-enrollment' \
                 WHERE device_id = $2 AND revoked_at IS NULL",
            )
            .bind(e.now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                // A quarantined device stays quarantined (only an operator's release or a
                // passing attestation ends it); any other starts over: its first attestation
                // is due within the period of this re-binding.
                "UPDATE devices SET ek_sha256 = $1, ek_public = $2, ak_public = $3, \
                 current_serial = $4, current_not_after = $5, updated_at = $6, tpm_bound_at = $6, \
                 attestation = CASE WHEN attestation = 'quarantined' THEN 'quarantined' ELSE 'none' END, \
                 attestation_reason = CASE WHEN attestation = 'quarantined' THEN attestation_reason ELSE NULL END \
                 WHERE id = $7",
            )
            .bind(&ek_sha256)
            .bind(&ek_public)
            .bind(&ak_public)
            .bind(&e.cert.serial)
            .bind(e.cert.not_after)
            .bind(e.now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            insert_certificate(&mut tx, id, e.cert, e.now).await?;
            append(
                &mut tx,
                e.now,
                &actor,
                "device.reenrolled",
                id,
                &json!({"serial": e.cert.serial, "ek_sha256": ek_sha256}),
            )
            .await?;
        } else {
            let d = e.device;
            let labels =
                serde_json::to_string(&d.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO devices (id, spiffe_id, zone, device_class, labels, status, created_at, \
                 updated_at, current_serial, current_not_after, ek_sha256, ek_public, ak_public, \
                 tpm_bound_at) \
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, $6, $7, $8, $9, $10, $11, $6)",
            )
            .bind(&d.id)
            .bind(&d.spiffe_id)
            .bind(&d.zone)
            .bind(d.device_class.clone())
            .bind(labels)
            .bind(e.now)
            .bind(&e.cert.serial)
            .bind(e.cert.not_after)
            .bind(&ek_sha256)
            .bind(&ek_public)
            .bind(&ak_public)
            .execute(&mut *tx)
            .await?;
            insert_certificate(&mut tx, &d.id, e.cert, e.now).await?;
            append(
                &mut tx,
                e.now,
                &actor,
                "device.enrolled",
                &d.id,
                &json!({"spiffe_id": d.spiffe_id, "zone": d.zone, "serial": e.cert.serial,
                        "tpm": true, "ek_sha256": ek_sha256}),
            )
            .await?;
        }
        append(
            &mut tx,
            e.now,
            &actor,
            "token.used",
            e.jti,
            &json!({"device_id": device_id}),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(device_id.to_owned()))
    }

    /// What an attestation request needs, in one read: the device holding certificate
    /// `serial`, and its TPM keys if it has any.
    pub(crate) async fn attesting_device(
        &self,
        serial: &str,
    ) -> Result<Option<AttestingDevice>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS}, d.ek_public, d.ak_public, k.revoked_at AS certificate_revoked_at \
             FROM certificates k JOIN devices d ON d.id = k.device_id WHERE k.serial = $1"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let device = device_from_row(&row)?;
        let revoked: Option<i64> = col(&row, "certificate_revoked_at")?;
        let ek: Option<String> = col(&row, "ek_public")?;
        let ak: Option<String> = col(&row, "ak_public")?;
        let keys = match (ek, ak) {
            (Some(ek), Some(ak)) => Some(TpmKeys {
                ek_public: unhex("ek_public", &ek)?,
                ak_public: unhex("ak_public", &ak)?,
            }),
            _ => None,
        };
        Ok(Some(AttestingDevice {
            device,
            keys,
            certificate_revoked: revoked.is_some(),
        }))
    }
}

/// See [`Registry::attesting_device`].
#[derive(Debug, Clone)]
pub struct AttestingDevice {
    /// The device.
    pub device: DeviceRecord,
    /// Its TPM keys (none for a device enrolled without a TPM).
    pub keys: Option<TpmKeys>,
    /// Whether the presented certificate itself is revoked (superseded by a re-enrollment).
    pub certificate_revoked: bool,
}
