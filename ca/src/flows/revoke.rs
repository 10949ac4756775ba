//! Revocation and the CRL: an operator revokes a device (every certificate it holds, in one
//! audited transaction), and every change of who is revoked signs a new CRL with the next
//! CRL number at once.

use super::devices::{audited_reason, device_id, not_found};
use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::pki::crl::build_crl;
use crate::store::{DeviceStatus, RevokeOutcome, StoredCrl};
use time::Duration;
use vouch_proto::device::{RevokeRequest, RevokeResponse};
use vouch_proto::ProblemCode;

/// Revokes device `id` and every certificate it holds, on behalf of the operator `actor`,
/// and publishes a new CRL.
pub async fn revoke(
    state: &AppState,
    actor: &str,
    id: &str,
    req: &RevokeRequest,
) -> Result<RevokeResponse, ApiError> {
    let id = device_id(id)?;
    let reason = audited_reason(&req.reason)?;
    let now = state.clock.unix();
    let serials = match state
        .registry
        .revoke_device(id.as_str(), reason, actor, now)
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
    tracing::info!(device_id = %id, by = %actor, "device revoked");
    let crl = publish_crl(state).await?;
    Ok(RevokeResponse {
        device_id: id.as_str().to_owned(),
        status: DeviceStatus::Revoked,
        revoked_serials: serials,
        crl_number: crl.number,
    })
}

/// Signs and stores a new CRL (the next number) listing every revoked certificate.
pub(crate) async fn publish_crl(state: &AppState) -> Result<StoredCrl, ApiError> {
    let now = state.clock.now();
    let validity = Duration::seconds(state.settings.crl_validity_secs);
    let ca = &state.ca;
    let crl = state
        .registry
        .publish_crl(now.unix_timestamp(), |number, revoked| {
            build_crl(ca, number, revoked, now, validity)
        })
        .await?
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(crl_number = crl.number, "CRL published");
    Ok(crl)
}

/// The CRL to serve: the latest, or a new one once a quarter of its validity has passed.
pub(crate) async fn current_crl(state: &AppState) -> Result<StoredCrl, ApiError> {
    let now = state.clock.unix();
    let refresh_after = state.settings.crl_validity_secs / 4;
    match state.registry.latest_crl().await? {
        Some(crl) if now - crl.this_update < refresh_after => Ok(crl),
        _ => publish_crl(state).await,
    }
}
