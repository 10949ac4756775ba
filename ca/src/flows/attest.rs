//! Periodic attestation of TPM devices: a single-use nonce and PCR selection, then the
//! quote, verified against the AK bound at enrollment and the device class's reference values
//! from the active policy set. Every failure of a quote that answers a good nonce quarantines
//! the device (fail closed); a nonce that cannot be used changes nothing. Nonces are stored
//! nowhere until used (`crate::nonce`); results are group-committed
//! (`Registry::write_attestation`), and the transaction that records a result checks again
//! that the certificate is unrevoked, the device active and the AK still bound.

use super::issue::rfc3339;
use crate::api::auth::DeviceCaller;
use crate::api::problem::{bounded, ApiError};
use crate::api::AppState;
use crate::nonce::NONCE_LEN;
use crate::store::{AttestJob, AttestWrite, AttestationResult, DeviceStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use vouch_attestor::quote::{verify_quote, Expected};
use vouch_attestor::reference::evaluate;
use vouch_attestor::submission::{decode_submission, EncodedSubmission};
use vouch_attestor::tpm::{qualified_name, PcrSelection, Public, RH_ENDORSEMENT};
use vouch_proto::attest::{AttestChallenge, AttestOutcome, QuoteSubmission};
use vouch_proto::ProblemCode;

/// How long a nonce may be answered, seconds.
pub const NONCE_TTL_SECS: i64 = 300;

/// Largest event log accepted, bytes (the route's body limit allows for its base64).
pub const MAX_EVENT_LOG_BYTES: usize = 512 * 1024;

/// Body limit of `POST /v1/attest/quote`: an event log in base64 and the rest.
pub const MAX_QUOTE_BODY_BYTES: usize = MAX_EVENT_LOG_BYTES * 4 / 3 + 64 * 1024;

/// What never changes for a certificate serial: the device it names, its class, and the TPM
/// keys bound at enrollment (a re-enrollment issues a new serial). Kept in memory for
/// [`IDENTITY_TTL_SECS`] so that an attestation needs no registry read; what can change
/// (revocation, the certificate's standing, the nonce) is checked again in the transaction
/// that records a result.
#[derive(Debug)]
pub struct TpmIdentity {
    /// The device.
    pub device_id: String,
    /// Its class (reference values are chosen by it).
    pub device_class: Option<String>,
    /// The AK bound at enrollment, parsed.
    pub ak: Public,
    /// The same AK as stored (hex), which the recording transaction compares.
    pub ak_public_hex: String,
    /// The qualified name of the AK's parent, the bound EK.
    pub parent_qualified_name: Vec<u8>,
}

/// [`TpmIdentity`] by certificate serial (hex), each with the time it was read. Bounded:
/// emptied when full.
#[derive(Debug, Default)]
pub struct TpmIdentities {
    by_serial: Mutex<HashMap<String, (i64, Arc<TpmIdentity>)>>,
}

/// Most identities kept in memory (about 100 MB at most).
pub(crate) const MAX_CACHED_IDENTITIES: usize = 200_000;

/// How long a cached identity is used before the registry is read again, seconds. The read
/// also checks the certificate's own standing, so a certificate superseded by a
/// re-enrollment on another replica is refused a challenge within this time (this replica
/// forgets the device at once); its quotes are refused at once on every replica, by the
/// transaction that records them.
pub const IDENTITY_TTL_SECS: i64 = 60;

impl TpmIdentities {
    fn get(&self, serial: &str, now: i64) -> Option<Arc<TpmIdentity>> {
        let map = self.by_serial.lock().ok()?;
        let (read_at, identity) = map.get(serial)?;
        (now - read_at < IDENTITY_TTL_SECS).then(|| identity.clone())
    }

    fn insert(&self, serial: String, identity: Arc<TpmIdentity>, now: i64) {
        if let Ok(mut map) = self.by_serial.lock() {
            if map.len() >= MAX_CACHED_IDENTITIES {
                map.clear();
            }
            map.insert(serial, (now, identity));
        }
    }

    /// Forgets every certificate of `device_id` (after its re-enrollment).
    pub(crate) fn forget_device(&self, device_id: &str) {
        if let Ok(mut map) = self.by_serial.lock() {
            map.retain(|_, (_, identity)| identity.device_id != device_id);
        }
    }
}

/// The calling device's TPM identity. The first request of a certificate reads the registry
/// (and refuses a revoked device, or one without TPM keys); later ones use the copy in memory.
async fn tpm_device(state: &AppState, caller: &DeviceCaller) -> Result<Arc<TpmIdentity>, ApiError> {
    let serial = caller.serial.to_hex();
    let now = state.clock.unix();
    if let Some(identity) = state.tpm_identities.get(&serial, now) {
        caller.check_record(&identity.device_id)?;
        return Ok(identity);
    }
    let found = state
        .registry
        .attesting_device(&serial)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ProblemCode::DeviceUnknown,
                "certificate is not known to the registry",
            )
        })?;
    caller.check_record(&found.device.id)?;
    if found.device.status != DeviceStatus::Active {
        return Err(device_revoked());
    }
    if found.certificate_revoked {
        return Err(crate::api::auth::certificate_revoked_problem());
    }
    let keys = found.keys.ok_or_else(|| {
        ApiError::new(
            ProblemCode::NoAttestationKey,
            "device was enrolled without a TPM; it has no attestation key",
        )
    })?;
    let corrupt = |what: &str, e: vouch_attestor::ParseError| {
        ApiError::internal(&format!("stored {what} does not parse: {e}"))
    };
    let ak = Public::parse(&keys.ak_public).map_err(|e| corrupt("AK", e))?;
    let ek = Public::parse(&keys.ek_public).map_err(|e| corrupt("EK", e))?;
    let identity = Arc::new(TpmIdentity {
        device_id: found.device.id,
        device_class: found.device.device_class,
        ak_public_hex: hex::encode(&keys.ak_public),
        ak,
        parent_qualified_name: qualified_name(&RH_ENDORSEMENT, &ek.name()),
    });
    state.tpm_identities.insert(serial, identity.clone(), now);
    Ok(identity)
}

fn device_revoked() -> ApiError {
    ApiError::new(
        ProblemCode::DeviceRevoked,
        "the device or this certificate is revoked, or superseded by a re-enrollment",
    )
}

/// The PCRs a device of `class` must quote: its reference values', else the boot PCRs 0-7
/// (the quote will then fail for want of reference values: fail closed).
fn pcrs_for(state: &AppState, class: Option<&str>) -> Vec<u8> {
    state
        .policy
        .active()
        .and_then(|set| {
            let reference = set.reference.as_ref()?;
            Some(reference.device_classes.get(class?)?.pcrs.clone())
        })
        .map(|mut pcrs| {
            pcrs.sort_unstable();
            pcrs.dedup();
            pcrs
        })
        .unwrap_or_else(|| (0..8).collect())
}

/// Issues a fresh single-use nonce and the PCR selection to quote, to a device bound to a
/// TPM whose certificate is in good standing.
pub async fn challenge(
    state: &AppState,
    caller: &DeviceCaller,
) -> Result<AttestChallenge, ApiError> {
    let device = tpm_device(state, caller).await?;
    let pcrs = pcrs_for(state, device.device_class.as_deref());
    let now = state.clock.now();
    let expires_at = now.unix_timestamp() + NONCE_TTL_SECS;
    // Nothing is stored: the nonce authenticates its device, PCRs and expiry itself.
    let nonce = state
        .nonce_key
        .issue(
            &state.rng,
            &device.device_id,
            &pcrs,
            expires_at,
            now.nanosecond(),
        )
        .map_err(|_| ApiError::internal(&"rng failure"))?;
    let nonce = hex::encode(nonce);
    Ok(AttestChallenge {
        nonce,
        pcrs,
        hash: "sha256".into(),
        expires_at: OffsetDateTime::from_unix_timestamp(expires_at)
            .map(rfc3339)
            .unwrap_or_default(),
    })
}

/// Verifies a quote and records the result: `active` on a pass, `quarantined` (with the
/// reason) on any failure of a quote that answers a good nonce.
pub async fn quote(
    state: &AppState,
    caller: &DeviceCaller,
    req: QuoteSubmission,
) -> Result<AttestOutcome, ApiError> {
    let nonce_invalid = || {
        ApiError::new(
            ProblemCode::NonceInvalid,
            "nonce is unknown, used, expired or was issued to another device",
        )
    };
    if req.nonce.len() != 2 * NONCE_LEN {
        return Err(nonce_invalid());
    }
    let nonce = hex::decode(&req.nonce).map_err(|_| nonce_invalid())?;
    let device = tpm_device(state, caller).await?;
    let now = state.clock.unix();
    // The PCRs this device's class quotes now. A nonce is bound to the PCRs it asked for, so
    // a nonce issued before reference values changed the selection is refused here.
    let pcrs = pcrs_for(state, device.device_class.as_deref());
    state
        .nonce_key
        .check(&nonce, &device.device_id, &pcrs, now)
        .map_err(|_| nonce_invalid())?;
    // Every failure of the quote is the device's: it is recorded, and quarantines the device,
    // together with using up the nonce; a nonce used already records nothing.
    let result = match verify(state, &device, &pcrs, &nonce, &req) {
        Ok(reference_set) => AttestationResult::Pass { reference_set },
        Err(reason) => AttestationResult::Fail {
            reason: bounded(&reason, 500),
        },
    };
    state.metrics.attestation(match &result {
        AttestationResult::Pass { .. } => "pass",
        AttestationResult::Fail { .. } => "fail",
    });
    let written = state
        .registry
        .write_attestation(AttestJob {
            nonce: hex::encode(&nonce),
            device_id: device.device_id.clone(),
            serial: caller.serial.to_hex(),
            ak_public: device.ak_public_hex.clone(),
            now,
            result: result.clone(),
        })
        .await?;
    let attestation = match written {
        AttestWrite::Recorded(attestation) => attestation,
        AttestWrite::NotCurrent => return Err(device_revoked()),
        AttestWrite::NonceUsed => return Err(nonce_invalid()),
    };
    match result {
        AttestationResult::Pass { reference_set } => {
            tracing::debug!(device_id = %device.device_id, reference_set = %reference_set, "attestation passed");
            if super::revoke::was_on_hold(state, &caller.serial.to_hex()) {
                super::revoke::publish_crl_after(state, "a held device attested").await;
            }
            Ok(AttestOutcome {
                result: "pass".into(),
                attestation,
                reference_set,
            })
        }
        AttestationResult::Fail { reason } => {
            tracing::warn!(device_id = %device.device_id, reason = %reason, "attestation failed; device quarantined");
            super::revoke::publish_crl_after(state, "a quarantine").await;
            Err(ApiError::new(
                ProblemCode::AttestationFailed,
                format!("attestation failed, device quarantined: {reason}"),
            ))
        }
    }
}

/// Every check of a submitted quote; the accepted reference set's name, or why it failed.
fn verify(
    state: &AppState,
    device: &TpmIdentity,
    pcrs: &[u8],
    nonce: &[u8],
    req: &QuoteSubmission,
) -> Result<String, String> {
    let decoded = decode_submission(
        &EncodedSubmission {
            quote: &req.quote,
            signature: &req.signature,
            pcr_values: &req.pcr_values,
            event_log: req.event_log.as_deref(),
        },
        MAX_EVENT_LOG_BYTES,
    )
    .map_err(|e| e.to_string())?;
    let selection = PcrSelection::sha256(pcrs);
    let verified = verify_quote(
        &Expected {
            ak: &device.ak,
            parent_qualified_name: &device.parent_qualified_name,
            nonce,
            selection: &selection,
        },
        &decoded.evidence(),
    )
    .map_err(|e| e.to_string())?;
    let class = device
        .device_class
        .as_deref()
        .ok_or("the device has no device class, so no reference values apply")?;
    let active = state
        .policy
        .active()
        .ok_or("no policy set is active, so no reference values apply")?;
    let reference = active
        .reference
        .as_ref()
        .and_then(|r| r.device_classes.get(class))
        .ok_or_else(|| format!("no reference values for device class `{class}`"))?;
    evaluate(reference, &verified)
}

/// One attempt of the stale sweep for the current attestation period: every device bound to
/// a TPM without a passing quote within the period and its grace becomes `stale`. The
/// database lets one replica sweep each period; `None` if the attempt failed (the next tick
/// retries).
pub async fn sweep_stale(state: &AppState, replica: &str) -> Option<crate::store::SweepOutcome> {
    let s = &state.settings;
    match state
        .registry
        .sweep_stale(
            state.clock.unix(),
            s.attestation_period_secs,
            s.attestation_grace_secs,
            replica,
        )
        .await
    {
        Ok(outcome) => {
            if let crate::store::SweepOutcome::Ran { period, stale } = outcome {
                tracing::info!(period, stale, replica, "stale sweep ran");
                if stale > 0 {
                    super::revoke::publish_crl_after(state, "a stale sweep").await;
                }
            }
            Some(outcome)
        }
        Err(e) => {
            tracing::warn!(error = %e, "stale sweep failed; next tick retries");
            None
        }
    }
}
