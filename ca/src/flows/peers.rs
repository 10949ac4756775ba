//! The peer directory: a device (or an operator) asks for another device's current device
//! and key-agreement certificates and its delivery endpoints, to seal messages to it.

use super::devices::{device_id, not_found};
use super::issue::rfc3339;
use crate::api::problem::ApiError;
use crate::api::AppState;
use time::OffsetDateTime;
use vouch_proto::peer::PeerRecord;
use vouch_proto::ProblemCode;

/// Device `id` as its peers see it, with the facts policy sees of it. A revoked device is refused (`peer_revoked`): nothing
/// may be sealed to it; a device whose current certificate came without a key-agreement
/// certificate cannot receive messages (`no_key_agreement_certificate`).
pub async fn peer(state: &AppState, id: &str) -> Result<PeerRecord, ApiError> {
    let id = device_id(id)?;
    let entry = state
        .registry
        .peer(id.as_str())
        .await?
        .ok_or_else(not_found)?;
    if entry.revoked {
        return Err(ApiError::new(
            ProblemCode::PeerRevoked,
            "this device or its current certificate is revoked",
        ));
    }
    let record = state
        .registry
        .device(id.as_str())
        .await?
        .ok_or_else(not_found)?;
    let credentials = entry.credentials.ok_or_else(|| {
        ApiError::new(
            ProblemCode::NoKeyAgreementCertificate,
            "this device has no key-agreement certificate: it enrolled or renewed without one",
        )
    })?;
    Ok(PeerRecord {
        device_id: entry.device_id,
        spiffe_id: entry.spiffe_id,
        zone: entry.zone,
        certificate_pem: credentials.device_certificate_pem,
        key_agreement_certificate_pem: credentials.key_agreement_certificate_pem,
        ca_chain_pem: state.ca.chain_pem().to_owned(),
        not_after: OffsetDateTime::from_unix_timestamp(credentials.not_after)
            .map(rfc3339)
            .unwrap_or_default(),
        endpoints: credentials.endpoints,
        facts: super::authorize::facts_of(&record),
    })
}
