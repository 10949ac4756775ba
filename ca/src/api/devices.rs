//! Operator views of the registry, and revocation.

use super::auth::Operator;
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::ids::DeviceId;
use crate::store::{DeviceFilter, DeviceRecord, DeviceStatus, RevokeOutcome};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Largest page of devices.
pub const MAX_PAGE: i64 = 1000;

/// Query of `GET /v1/devices`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only devices in this zone.
    #[param(
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$",
        min_length = 1,
        max_length = 63
    )]
    pub zone: Option<String>,
    /// Only devices with this status.
    #[param(value_type = Option<DeviceStatus>)]
    pub status: Option<String>,
    /// The `next_cursor` of the previous page (a device id).
    #[param(pattern = "^[0-9a-f]{32}$")]
    pub cursor: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A page of devices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    /// Devices ordered by id.
    pub devices: Vec<DeviceRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn bad_query(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

/// Lists devices, filtered by zone and status, with cursor pagination.
#[utoipa::path(get, path = "/v1/devices", params(ListQuery), security(("operator_jwt" = [])),
    responses((status = 200, body = DeviceList), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn list_devices(
    State(state): State<AppState>,
    _operator: Operator,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DeviceList>, ApiError> {
    let Query(q) = query.map_err(|e| bad_query(super::problem::bounded(&e.body_text(), 300)))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad_query(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            DeviceStatus::parse(s)
                .ok_or_else(|| bad_query("status must be `active` or `revoked`"))?,
        ),
    };
    if let Some(zone) = &q.zone {
        crate::ids::Zone::parse(zone).map_err(|e| bad_query(e.to_string()))?;
    }
    if let Some(cursor) = &q.cursor {
        DeviceId::parse(cursor).ok_or_else(|| bad_query("cursor is not a device id"))?;
    }
    let devices = state
        .registry
        .list_devices(&DeviceFilter {
            zone: q.zone,
            status,
            after: q.cursor,
            limit: limit + 1,
        })
        .await?;
    let has_more = devices.len() as i64 > limit;
    let page: Vec<DeviceRecord> = devices.into_iter().take(limit as usize).collect();
    let next_cursor = if has_more {
        page.last().map(|d| d.id.clone())
    } else {
        None
    };
    Ok(Json(DeviceList {
        devices: page,
        next_cursor,
    }))
}

pub(super) fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "device_not_found",
        "no device with that id",
    )
}

/// An operator's reason for an audited change: trimmed, 1 to 256 characters.
pub(super) fn audited_reason(raw: &str) -> Result<&str, ApiError> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > 256 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "reason must be 1 to 256 characters",
        ));
    }
    Ok(reason)
}

pub(super) fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).ok_or_else(not_found)
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", security(("operator_jwt" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRecord), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn get_device(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeviceRecord>, ApiError> {
    let id = device_id(&id)?;
    let device = state.registry.device(id.as_str()).await?;
    device.map(Json).ok_or_else(not_found)
}

/// `POST /v1/devices/{id}/revoke` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why (recorded in the registry and the audit log), 1 to 256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub reason: String,
}

/// Answer of a revocation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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

/// Revokes a device: its certificates go on the CRL at once and it can no longer renew.
#[utoipa::path(post, path = "/v1/devices/{id}/revoke", request_body = RevokeRequest,
    security(("operator_jwt" = [])), params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = RevokeResponse), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn revoke_device(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    operator.require_write()?;
    let id = device_id(&id)?;
    let reason = audited_reason(&req.reason)?;
    let now = state.clock.unix();
    let serials = match state
        .registry
        .revoke_device(id.as_str(), reason, &operator.actor(), now)
        .await?
    {
        RevokeOutcome::Revoked(serials) => serials,
        RevokeOutcome::AlreadyRevoked => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "device_already_revoked",
                "device is already revoked",
            ))
        }
        RevokeOutcome::NotFound => return Err(not_found()),
    };
    state.metrics.revocations.inc();
    tracing::info!(device_id = %id, by = %operator.actor(), "device revoked");
    let crl = super::ops::publish_crl(&state).await?;
    Ok(Json(RevokeResponse {
        device_id: id.as_str().to_owned(),
        status: DeviceStatus::Revoked,
        revoked_serials: serials,
        crl_number: crl.number,
    }))
}
