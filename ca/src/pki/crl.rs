//! Certificate revocation lists signed by the issuing CA.

use super::authority::Authority;
use super::PkiError;
use crate::ids::Serial;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams};
use time::{Duration, OffsetDateTime};

/// One revoked certificate as the registry knows it.
#[derive(Debug, Clone)]
pub(crate) struct RevokedEntry {
    /// The certificate's serial.
    pub serial: Serial,
    /// When the registry revoked it (or put it on hold).
    pub revoked_at: OffsetDateTime,
    /// Only on hold (`certificateHold`): the device is quarantined or stale, and is taken
    /// off the list on release or a passing attestation.
    pub hold: bool,
}

/// Builds and signs a CRL with number `crl_number` listing `revoked`, valid from `now` for
/// `validity`. Returns DER.
pub(crate) fn build_crl(
    ca: &Authority,
    crl_number: u64,
    revoked: &[RevokedEntry],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Vec<u8>, PkiError> {
    let (issuer, issuer_key) = ca.issuer();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + validity,
        crl_number: rcgen::SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(r.serial.bytes()),
                revocation_time: r.revoked_at,
                // RFC 5280 5.3.1: the reason code `unspecified` SHOULD be absent.
                reason_code: r.hold.then_some(rcgen::RevocationReason::CertificateHold),
                invalidity_date: None,
            })
            .collect(),
        // Unused by rcgen for CRLs: the authority key identifier comes from the issuer.
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer, issuer_key)?.der().to_vec())
}
