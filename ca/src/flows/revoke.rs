//! Revocation and the CRL: an operator revokes a device (every certificate it holds, in one
//! audited transaction), and every change of who is revoked signs a new CRL with the next
//! CRL number at once. Agents long-poll for the next CRL ([`crl_after`]); every replica
//! learns of a new number at once (its own, or another's through the registry).

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
    state.crl_feed.advance(crl.number);
    Ok(crl)
}

/// The newest CRL number known to this replica; long-polls wait for it to pass theirs.
#[derive(Debug)]
pub struct CrlFeed(tokio::sync::watch::Sender<i64>);

impl Default for CrlFeed {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl CrlFeed {
    /// Records that CRL `number` exists (numbers only grow).
    pub(crate) fn advance(&self, number: i64) {
        self.0.send_if_modified(|known| {
            let newer = number > *known;
            if newer {
                *known = number;
            }
            newer
        });
    }
}

/// What `GET /v1/crl` answers.
#[derive(Debug)]
pub enum CrlAnswer {
    /// The current CRL.
    Current(StoredCrl),
    /// The caller's CRL (this number) is still the current one.
    NotModified(i64),
}

/// The current CRL, unless the caller has it (`known`): then, for up to `wait`, the next one
/// as soon as it is signed (here or on another replica), or that the caller's is current.
pub async fn crl_after(
    state: &AppState,
    known: Option<i64>,
    wait: std::time::Duration,
) -> Result<CrlAnswer, ApiError> {
    let crl = current_crl(state).await?;
    state.crl_feed.advance(crl.number);
    let Some(known) = known.filter(|n| *n == crl.number) else {
        return Ok(CrlAnswer::Current(crl));
    };
    if !wait.is_zero() {
        let mut newer = state.crl_feed.0.subscribe();
        let _ = tokio::time::timeout(wait, newer.wait_for(|n| *n > known)).await;
    }
    let crl = current_crl(state).await?;
    Ok(if crl.number == known {
        CrlAnswer::NotModified(known)
    } else {
        CrlAnswer::Current(crl)
    })
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
