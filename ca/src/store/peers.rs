//! Key-agreement certificates and the peer directory: what a device needs to seal a message
//! to another device. A key-agreement certificate is written in the transaction that writes
//! its device certificate, and shares that certificate's standing (revoked with it).

use super::{Registry, StoreError};

/// A key-agreement certificate issued with a device certificate.
#[derive(Debug, Clone)]
pub struct NewKeyAgreement {
    /// Its serial, lowercase hex.
    pub serial: String,
    /// The key-agreement certificate, PEM.
    pub certificate_pem: String,
    /// The device certificate it goes with, PEM (the peer directory serves both).
    pub device_certificate_pem: String,
    /// Delivery endpoints the device advertised (checked URLs).
    pub endpoints: Vec<String>,
}

/// A device as the peer directory finds it.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    /// Device id.
    pub device_id: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Zone.
    pub zone: String,
    /// Whether the device (or its current certificate) is revoked.
    pub revoked: bool,
    /// The current certificates, if the current device certificate came with a
    /// key-agreement certificate.
    pub credentials: Option<PeerCredentials>,
}

/// The current certificates of a peer.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    /// Device certificate, PEM.
    pub device_certificate_pem: String,
    /// Key-agreement certificate, PEM.
    pub key_agreement_certificate_pem: String,
    /// Expiry of both (Unix seconds).
    pub not_after: i64,
    /// Advertised delivery endpoints.
    pub endpoints: Vec<String>,
}

/// Writes `ka`, issued with device certificate `device_serial` (already written in this
/// transaction).
pub(super) async fn insert_key_agreement(
    conn: &mut sqlx::AnyConnection,
    device_id: &str,
    device_serial: &str,
    not_after: i64,
    ka: &NewKeyAgreement,
    now: i64,
) -> Result<(), StoreError> {
    let endpoints =
        serde_json::to_string(&ka.endpoints).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO key_agreement_certificates (serial, device_id, device_serial, \
         certificate_pem, device_certificate_pem, not_after, endpoints, issued_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&ka.serial)
    .bind(device_id)
    .bind(device_serial)
    .bind(&ka.certificate_pem)
    .bind(&ka.device_certificate_pem)
    .bind(not_after)
    .bind(endpoints)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

type PeerRow = (
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

impl Registry {
    /// Device `device_id` and the key-agreement certificate that came with its current
    /// device certificate, if any.
    pub async fn peer(&self, device_id: &str) -> Result<Option<PeerEntry>, StoreError> {
        let row: Option<PeerRow> = sqlx::query_as(
            "SELECT d.id, d.spiffe_id, d.zone, d.status, c.revoked_at, k.device_certificate_pem, \
             k.certificate_pem, k.not_after, k.endpoints FROM devices d \
             JOIN certificates c ON c.serial = d.current_serial \
             LEFT JOIN key_agreement_certificates k ON k.device_serial = d.current_serial \
             WHERE d.id = $1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((
            id,
            spiffe_id,
            zone,
            status,
            revoked_at,
            device_pem,
            ka_pem,
            not_after,
            endpoints,
        )) = row
        else {
            return Ok(None);
        };
        let credentials = match (device_pem, ka_pem, not_after, endpoints) {
            (
                Some(device_certificate_pem),
                Some(key_agreement_certificate_pem),
                Some(not_after),
                Some(endpoints),
            ) => Some(PeerCredentials {
                device_certificate_pem,
                key_agreement_certificate_pem,
                not_after,
                endpoints: serde_json::from_str(&endpoints)
                    .map_err(|e| StoreError::Corrupt(format!("endpoints: {e}")))?,
            }),
            _ => None,
        };
        Ok(Some(PeerEntry {
            device_id: id,
            spiffe_id,
            zone,
            revoked: status != "active" || revoked_at.is_some(),
            credentials,
        }))
    }
}
