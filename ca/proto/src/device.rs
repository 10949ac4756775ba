//! Devices as the registry holds them, and the operator's calls on them: listing, revocation,
//! release from quarantine, attestation history.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// A device's standing in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Enrolled and in good standing.
    Active,
    /// Revoked: its certificates are on the CRL and it cannot renew.
    Revoked,
}

/// A device's attestation health, as the verifier last found it (separate from revocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttestationState {
    /// Never attested (enrolled without a TPM, or not yet).
    None,
    /// The last quote passed, within the period plus grace.
    Active,
    /// No passing quote within the period plus grace.
    Stale,
    /// The last quote failed; only an operator's release or a passing quote ends it.
    Quarantined,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// SPIFFE ID in its certificates.
    pub spiffe_id: String,
    /// Zone.
    pub zone: String,
    /// Device class.
    pub device_class: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Standing.
    pub status: DeviceStatus,
    /// Enrollment time (Unix seconds).
    pub created_at: i64,
    /// Last change (Unix seconds).
    pub updated_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
    /// Revocation reason, if revoked.
    pub revocation_reason: Option<String>,
    /// Serial of the newest certificate.
    pub current_serial: String,
    /// Expiry of the newest certificate (Unix seconds).
    pub current_not_after: i64,
    /// Attestation health.
    pub attestation: AttestationState,
    /// Time of the last passing attestation (Unix seconds), if any.
    pub last_attested: Option<i64>,
    /// Why the device is quarantined or stale.
    pub attestation_reason: Option<String>,
    /// For a device enrolled with a TPM: SHA-256 (hex) of its endorsement key's public area.
    pub ek_sha256: Option<String>,
}

/// Largest page of devices.
pub const MAX_PAGE: i64 = 1000;

/// Query of `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only devices in this zone.
    #[param(
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$",
        min_length = 1,
        max_length = 63
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Only devices with this status.
    #[param(value_type = Option<DeviceStatus>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The `next_cursor` of the previous page (a device id).
    #[param(pattern = "^[0-9a-f]{32}$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// A page of devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    /// Devices ordered by id.
    pub devices: Vec<DeviceRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/devices/{id}/revoke` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why (recorded in the registry and the audit log), 1 to 256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub reason: String,
}

/// Answer of a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokeResponse {
    /// The device.
    pub device_id: String,
    /// Always `revoked`.
    pub status: DeviceStatus,
    /// Serials revoked now; all appear on the CRL.
    pub revoked_serials: Vec<String>,
    /// Number of the CRL that lists them.
    pub crl_number: i64,
}

/// Most history entries returned.
pub const HISTORY_LIMIT: i64 = 200;

/// A device's attestation history, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestationHistory {
    /// The device.
    pub device: DeviceRecord,
    /// Results and state changes, newest first (at most 200).
    pub attestations: Vec<AttestationRecord>,
}

/// Body of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// Why the device may return to service (1 to 256 characters; audited).
    #[schema(min_length = 1, max_length = 256)]
    pub reason: String,
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestationRecord {
    /// Sequence number.
    pub id: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// `pass`, `fail`, `stale` (by the sweep) or `released` (by an operator).
    pub outcome: String,
    /// Why, in words.
    pub reason: String,
    /// The reference set a passing quote met.
    pub reference_set: Option<String>,
}

impl DeviceStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "active" => Some(Self::Active),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl AttestationState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Active => "active",
            Self::Stale => "stale",
            Self::Quarantined => "quarantined",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Self::None),
            "active" => Some(Self::Active),
            "stale" => Some(Self::Stale),
            "quarantined" => Some(Self::Quarantined),
            _ => None,
        }
    }
}
