//! Renewal: a device that presents its current certificate over mutual TLS gets a new one
//! for the key in its CSR. The rules, in order: the certificate's serial is registered to the
//! device its SPIFFE ID names; the device is not revoked; the certificate is not superseded;
//! the device is neither quarantined nor stale. They are checked once early (before a signature
//! is spent) and again, all of them, inside the transaction that records the new certificate
//! (`Registry::renew`), so a device whose standing changes in between gets nothing.

use super::issue::{certificate_record, certify, rfc3339, KeySource};
use crate::api::auth::DeviceCaller;
use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::ids::{DeviceId, Serial, Zone};
use crate::store::{AttestationState, DeviceStatus, RenewRefusal};
use std::future::Future;
use vouch_proto::enroll::{EnrollResponse, RenewRequest};
use vouch_proto::ProblemCode;

/// The refusal of a renewal, as a problem.
pub(crate) fn renew_refused(refusal: RenewRefusal) -> ApiError {
    let code = match refusal {
        RenewRefusal::UnknownCertificate => ProblemCode::DeviceUnknown,
        RenewRefusal::DeviceRevoked => ProblemCode::DeviceRevoked,
        RenewRefusal::CertificateRevoked => ProblemCode::CertificateRevoked,
        RenewRefusal::DeviceQuarantined => ProblemCode::DeviceQuarantined,
        RenewRefusal::DeviceStale => ProblemCode::DeviceStale,
    };
    ApiError::new(code, refusal.to_string())
}

/// Renews `caller`'s certificate. `between` runs after the early checks and before the
/// writing transaction: the handler passes a ready future; tests pass one that changes the
/// device's standing in that window, to show the transaction's own checks decide.
pub async fn renew(
    state: &AppState,
    caller: &DeviceCaller,
    req: RenewRequest,
    between: impl Future<Output = ()>,
) -> Result<EnrollResponse, ApiError> {
    let old_serial = caller.serial.to_hex();
    // Early refusal before spending a signature; the registry checks again atomically.
    let (device, certificate_revoked) = state
        .registry
        .device_by_serial(&old_serial)
        .await?
        .ok_or_else(|| renew_refused(RenewRefusal::UnknownCertificate))?;
    caller.check_record(&device.id)?;
    if device.status != DeviceStatus::Active {
        return Err(renew_refused(RenewRefusal::DeviceRevoked));
    }
    if certificate_revoked {
        return Err(renew_refused(RenewRefusal::CertificateRevoked));
    }
    // A device that failed attestation or went silent gets no new certificate (checked again
    // by the registry in the transaction that records it).
    match device.attestation {
        AttestationState::Quarantined => {
            return Err(renew_refused(RenewRefusal::DeviceQuarantined))
        }
        AttestationState::Stale => return Err(renew_refused(RenewRefusal::DeviceStale)),
        _ => {}
    }
    let device_id = DeviceId::parse(&device.id)
        .ok_or_else(|| ApiError::internal(&"stored device id does not parse"))?;
    let zone = Zone::parse(&device.zone).map_err(|e| ApiError::internal(&e))?;
    let serial = Serial::random(&state.rng).map_err(|_| ApiError::internal(&"rng failure"))?;
    let now = state.clock.now();
    let (issued, _) = certify(
        state,
        &device_id,
        &zone,
        &serial,
        now,
        KeySource::Csr(req.csr_pem),
    )?;
    between.await;
    let (cert, key_agreement_certificate_pem) = certificate_record(
        state,
        &device_id,
        &zone,
        (&serial, &issued),
        req.key_agreement_csr_pem.as_deref(),
        &req.advertise,
    )?;
    state
        .registry
        .renew(&old_serial, &cert, now.unix_timestamp())
        .await?
        .map_err(renew_refused)?;
    tracing::info!(device_id = %device_id, old_serial = %old_serial, serial = %cert.serial, "certificate renewed");
    Ok(EnrollResponse {
        device_id: device.id,
        spiffe_id: device.spiffe_id,
        zone: device.zone,
        serial: cert.serial,
        certificate_pem: issued.pem,
        ca_chain_pem: state.ca.chain_pem().to_owned(),
        not_after: rfc3339(issued.not_after),
        private_key_pem: None,
        key_agreement_certificate_pem,
    })
}
