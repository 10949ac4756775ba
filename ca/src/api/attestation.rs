//! Operators' view of attestation: a device's history of results, and releasing a device
//! from quarantine (an audited decision).

use super::auth::Operator;
use super::devices::{audited_reason, device_id, not_found};
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::store::{DeviceRecord, ReleaseOutcome};
use axum::extract::{Path, State};
use axum::Json;
use vouch_proto::device::{AttestationHistory, ReleaseRequest, HISTORY_LIMIT};
use vouch_proto::ProblemCode;

/// The attestation results and state changes of one device.
#[utoipa::path(get, path = "/v1/devices/{id}/attestations", security(("operator_jwt" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = AttestationHistory), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn history(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<AttestationHistory>, ApiError> {
    let id = device_id(&id)?;
    let device = state
        .registry
        .device(id.as_str())
        .await?
        .ok_or_else(not_found)?;
    let attestations = state
        .registry
        .attestation_history(id.as_str(), HISTORY_LIMIT)
        .await?;
    Ok(Json(AttestationHistory {
        device,
        attestations,
    }))
}

/// Releases a quarantined device: it is `active` again until its next attestation says
/// otherwise. `409 device_not_quarantined` if it is not quarantined.
#[utoipa::path(post, path = "/v1/devices/{id}/release", request_body = ReleaseRequest,
    security(("operator_jwt" = [])), params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRecord), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn release(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReleaseRequest>,
) -> Result<Json<DeviceRecord>, ApiError> {
    operator.require_write()?;
    let id = device_id(&id)?;
    let reason = audited_reason(&req.reason)?;
    let now = state.clock.unix();
    match state
        .registry
        .release_device(id.as_str(), reason, &operator.actor(), now)
        .await?
    {
        ReleaseOutcome::NotFound => Err(not_found()),
        ReleaseOutcome::NotQuarantined => Err(ApiError::new(
            ProblemCode::DeviceNotQuarantined,
            "device is not quarantined",
        )),
        ReleaseOutcome::Released(device) => {
            tracing::info!(device_id = %id, by = %operator.actor(), "device released from quarantine");
            Ok(Json(*device))
        }
    }
}
