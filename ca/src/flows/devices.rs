//! Operators' views of the registry (a page of devices, one device, its attestation
//! history, whether it answers) and releasing a device from quarantine, an audited decision.

use crate::api::problem::{bounded, ApiError};
use crate::api::AppState;
use crate::ids::{DeviceId, Zone};
use crate::store::{DeviceFilter, DeviceRecord, DeviceStatus, ReleaseOutcome};
use vouch_proto::device::{
    AttestationHistory, DeviceList, ListQuery, ReleaseRequest, HISTORY_LIMIT, MAX_PAGE,
};
use vouch_proto::ProblemCode;

fn bad_query(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemCode::InvalidQuery, detail)
}

/// The problem for an id that names no device.
pub(crate) fn not_found() -> ApiError {
    ApiError::new(ProblemCode::DeviceNotFound, "no device with that id")
}

/// The reason an operator gives for an audited change: 1 to 256 characters, trimmed.
pub(crate) fn audited_reason(raw: &str) -> Result<&str, ApiError> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > 256 {
        return Err(ApiError::new(
            ProblemCode::InvalidBody,
            "reason must be 1 to 256 characters",
        ));
    }
    Ok(reason)
}

/// A device id from a path; anything else names no device.
pub(crate) fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).ok_or_else(not_found)
}

/// The problem for a query string that does not parse (axum's words, bounded).
pub(crate) fn unreadable_query(text: &str) -> ApiError {
    bad_query(bounded(text, 300))
}

/// Whether the registry answers (readiness).
pub async fn ready(state: &AppState) -> Result<(), ApiError> {
    state.registry.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(ProblemCode::NotReady, "database is not reachable")
    })
}

/// A page of devices, by id, filtered by zone and status.
pub async fn list(state: &AppState, q: ListQuery) -> Result<DeviceList, ApiError> {
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
        Zone::parse(zone).map_err(|e| bad_query(e.to_string()))?;
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
    Ok(DeviceList {
        devices: page,
        next_cursor,
    })
}

/// One device.
pub async fn show(state: &AppState, id: &str) -> Result<DeviceRecord, ApiError> {
    let id = device_id(id)?;
    state
        .registry
        .device(id.as_str())
        .await?
        .ok_or_else(not_found)
}

/// A device and its latest attestation results, newest first.
pub async fn history(state: &AppState, id: &str) -> Result<AttestationHistory, ApiError> {
    let device = show(state, id).await?;
    let attestations = state
        .registry
        .attestation_history(&device.id, HISTORY_LIMIT)
        .await?;
    Ok(AttestationHistory {
        device,
        attestations,
    })
}

/// Releases a quarantined device (back to `active` until its next attestation), on behalf
/// of the operator `actor`, with an audit record.
pub async fn release(
    state: &AppState,
    actor: &str,
    id: &str,
    req: &ReleaseRequest,
) -> Result<DeviceRecord, ApiError> {
    let id = device_id(id)?;
    let reason = audited_reason(&req.reason)?;
    let now = state.clock.unix();
    match state
        .registry
        .release_device(id.as_str(), reason, actor, now)
        .await?
    {
        ReleaseOutcome::NotFound => Err(not_found()),
        ReleaseOutcome::NotQuarantined => Err(ApiError::new(
            ProblemCode::DeviceNotQuarantined,
            "device is not quarantined",
        )),
        ReleaseOutcome::Released(device) => {
            tracing::info!(device_id = %id, by = %actor, "device released from quarantine");
            super::revoke::publish_crl_after(state, "a release").await;
            Ok(*device)
        }
    }
}
