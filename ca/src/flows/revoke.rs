//! Revocation and the CRL: an operator revokes a device (every certificate it holds, in one
//! audited transaction), and every change of who is revoked signs a new CRL with the next
//! CRL number at once. Agents long-poll for the next CRL ([`crl_after`]); every replica
//! learns of a new number at once (its own, or another's through the registry).

use super::devices::{audited_reason, device_id, not_found};
use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::pki::crl::build_crl;
use crate::store::{DeviceStatus, RevokeOutcome, StoredCrl};
use std::collections::HashSet;
use std::sync::RwLock;
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
    let mut held = HashSet::new();
    let crl = state
        .registry
        .publish_crl(now.unix_timestamp(), |number, revoked| {
            held = revoked
                .iter()
                .filter(|r| r.hold)
                .map(|r| r.serial.to_hex())
                .collect();
            build_crl(ca, number, revoked, now, validity)
        })
        .await?
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(
        crl_number = crl.number,
        on_hold = held.len(),
        "CRL published"
    );
    state.crl_feed.set_held(crl.number, held);
    state.crl_feed.advance(crl.number);
    Ok(crl)
}

/// Signs a new CRL after a change of who is on hold (a quarantine, a stale sweep, a
/// release), logging a failure: the change itself is recorded, and the next CRL (at the
/// latest a quarter of the validity later) lists it.
pub(crate) async fn publish_crl_after(state: &AppState, change: &str) {
    if let Err(e) = publish_crl(state).await {
        tracing::error!(error = ?e, change, "cannot sign a new CRL; the next one will list the change");
    }
}

/// Whether a passing attestation by the certificate `serial` (hex) takes it off hold, so
/// that a new CRL is due.
pub(crate) fn was_on_hold(state: &AppState, serial: &str) -> bool {
    state.crl_feed.is_held(serial)
}

/// Follows the CRL numbers other replicas sign, for as long as the process runs: long-polls
/// here wake at once, and the certificates on hold are read again.
pub async fn follow_other_replicas(state: AppState) {
    let follower = state.clone();
    follower
        .registry
        .follow_crl_numbers(|n| {
            if n > state.crl_feed.held_number() {
                let state = state.clone();
                tokio::spawn(async move {
                    match state.registry.held_serials(state.clock.unix()).await {
                        Ok(held) => state.crl_feed.set_held(n, held.into_iter().collect()),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the certificates on hold")
                        }
                    }
                });
            }
            state.crl_feed.advance(n);
        })
        .await;
}

/// The newest CRL number known to this replica (long-polls wait for it to pass theirs), and
/// the certificates the newest CRL it read puts on hold.
#[derive(Debug)]
pub struct CrlFeed {
    newest: tokio::sync::watch::Sender<i64>,
    held: RwLock<(i64, HashSet<String>)>,
}

impl Default for CrlFeed {
    fn default() -> Self {
        Self {
            newest: tokio::sync::watch::Sender::new(0),
            held: RwLock::new((0, HashSet::new())),
        }
    }
}

impl CrlFeed {
    /// Records the serials (hex) CRL `number` puts on hold, unless a newer CRL's are known.
    fn set_held(&self, number: i64, serials: HashSet<String>) {
        if let Ok(mut held) = self.held.write() {
            if number >= held.0 {
                *held = (number, serials);
            }
        }
    }

    fn held_number(&self) -> i64 {
        self.held.read().map(|h| h.0).unwrap_or(0)
    }

    fn is_held(&self, serial: &str) -> bool {
        // A poisoned lock: assume held, so that a new CRL is signed.
        self.held.read().map_or(true, |h| h.1.contains(serial))
    }

    /// Records that CRL `number` exists (numbers only grow).
    pub(crate) fn advance(&self, number: i64) {
        self.newest.send_if_modified(|known| {
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
        let mut newer = state.crl_feed.newest.subscribe();
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
