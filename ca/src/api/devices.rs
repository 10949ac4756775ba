//! Operators' views of the registry, revocation and release: decode, call
//! [`crate::flows::devices`] or [`crate::flows::revoke`], encode.

use super::auth::{Caller, Operator};
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::flows::devices::unreadable_query;
use crate::store::DeviceRecord;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use vouch_proto::device::{
    AttestationHistory, DeviceList, ListQuery, ReleaseRequest, RevokeRequest, RevokeResponse,
};
use vouch_proto::peer::PeerRecord;

/// Lists devices, filtered by zone and status, with cursor pagination.
#[utoipa::path(get, path = "/v1/devices", params(ListQuery), security(("operator_jwt" = [])),
    responses((status = 200, body = DeviceList), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_devices(
    State(state): State<AppState>,
    _operator: Operator,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DeviceList>, ApiError> {
    let Query(q) = query.map_err(|e| unreadable_query(&e.body_text()))?;
    crate::flows::devices::list(&state, q).await.map(Json)
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", security(("operator_jwt" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRecord), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_device(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeviceRecord>, ApiError> {
    crate::flows::devices::show(&state, &id).await.map(Json)
}

/// Revokes a device: its certificates go on the CRL at once and it can no longer renew.
#[utoipa::path(post, path = "/v1/devices/{id}/revoke", request_body = RevokeRequest,
    security(("operator_jwt" = [])), params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = RevokeResponse), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_device(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    operator.require_write()?;
    crate::flows::revoke::revoke(&state, &operator.actor(), &id, &req)
        .await
        .map(Json)
}

/// The attestation results and state changes of one device.
#[utoipa::path(get, path = "/v1/devices/{id}/attestations", security(("operator_jwt" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = AttestationHistory), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn history(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<AttestationHistory>, ApiError> {
    crate::flows::devices::history(&state, &id).await.map(Json)
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
    crate::flows::devices::release(&state, &operator.actor(), &id, &req)
        .await
        .map(Json)
}

/// A device as its peers see it: its current device and key-agreement certificates, the CA
/// chain and its delivery endpoints. For devices (mTLS) and operators.
#[utoipa::path(get, path = "/v1/peers/{id}", security(("device_mtls" = []), ("operator_jwt" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = PeerRecord),
        (status = 404, description = "no such device (`device_not_found`), or it has no key-agreement certificate (`no_key_agreement_certificate`)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 410, description = "the device is revoked (`peer_revoked`)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn peer(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PeerRecord>, ApiError> {
    crate::flows::peers::peer(&state, &id).await.map(Json)
}
