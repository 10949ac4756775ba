//! Operator views of the registry, and revocation.

use super::auth::Operator;
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::ids::DeviceId;
use crate::store::{DeviceFilter, DeviceRecord, DeviceStatus, RevokeOutcome};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use vouch_proto::device::{DeviceList, ListQuery, RevokeRequest, RevokeResponse, MAX_PAGE};
use vouch_proto::ProblemCode;

fn bad_query(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemCode::InvalidQuery, detail)
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
    ApiError::new(ProblemCode::DeviceNotFound, "no device with that id")
}

/// An operator's reason for an audited change: trimmed, 1 to 256 characters.
pub(super) fn audited_reason(raw: &str) -> Result<&str, ApiError> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > 256 {
        return Err(ApiError::new(
            ProblemCode::InvalidBody,
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
                ProblemCode::DeviceAlreadyRevoked,
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
