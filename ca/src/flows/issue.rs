//! Issuing a device certificate, shared by enrollment and renewal: the key source is checked
//! (a CSR strictly, or a key generated here) and the certificate signed by the issuing CA.

use crate::api::problem::{bounded, ApiError};
use crate::api::AppState;
use crate::ids::{DeviceId, Serial, Zone};
use crate::pki::csr::{check_csr_pem, CsrError};
use crate::pki::profile::{
    issue_device_certificate, issue_key_agreement_certificate, DeviceCertificateSpec,
    IssuedCertificate,
};
use crate::store::{NewCertificate, NewKeyAgreement};
use rcgen::PublicKeyData;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use vouch_proto::ProblemCode;

/// RFC 3339, as every time on the wire is written.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The problem for a CSR that is refused.
pub(crate) fn csr_problem(e: &CsrError) -> ApiError {
    let code = match e {
        CsrError::TooLarge { .. } => ProblemCode::CsrTooLarge,
        CsrError::NotPem | CsrError::Malformed | CsrError::TrailingData => {
            ProblemCode::CsrMalformed
        }
        CsrError::UnsupportedKey(_) | CsrError::RsaKeySize { .. } => ProblemCode::CsrUnsupportedKey,
        CsrError::SignatureAlgorithm(_) => ProblemCode::CsrUnsupportedAlgorithm,
        CsrError::BadSignature => ProblemCode::CsrBadSignature,
    };
    ApiError::new(code, bounded(&e.to_string(), 300))
}

/// Where the certified key comes from.
pub(crate) enum KeySource {
    /// A device's CSR (PEM), checked before use.
    Csr(String),
    /// A P-256 key generated here and returned once.
    Generate,
}

/// The spec of a device's certificates.
fn spec<'a>(
    state: &'a AppState,
    device_id: &'a DeviceId,
    zone: &'a Zone,
    serial: &'a Serial,
    now: OffsetDateTime,
) -> DeviceCertificateSpec<'a> {
    DeviceCertificateSpec {
        device_id,
        trust_domain: &state.trust_domain,
        zone,
        serial,
        now,
        lifetime: Duration::seconds(state.settings.cert_lifetime_secs),
        crl_url: &state.settings.crl_url,
    }
}

/// What a device asks for beside its device certificate: a key-agreement certificate (for a
/// CSR of an EC P-256 key that is not the device key) and the delivery endpoints published
/// with it. Without a CSR nothing is issued, and endpoints are refused: they are published
/// only with a key to encrypt to.
fn certify_key_agreement(
    state: &AppState,
    device_id: &DeviceId,
    zone: &Zone,
    device: &IssuedCertificate,
    csr_pem: Option<&str>,
    advertise: &[String],
) -> Result<Option<NewKeyAgreement>, ApiError> {
    let invalid = |detail: String| ApiError::new(ProblemCode::InvalidBody, detail);
    vouch_proto::peer::check_endpoints(advertise)
        .map_err(|e| invalid(format!("`advertise`: {e}")))?;
    let Some(csr_pem) = csr_pem else {
        if !advertise.is_empty() {
            return Err(invalid(
                "`advertise` needs `key_agreement_csr_pem`: peers can deliver only to a key they can encrypt to".into(),
            ));
        }
        return Ok(None);
    };
    let key = check_csr_pem(csr_pem).map_err(|e| csr_problem(&e))?;
    if !key.is_p256() {
        return Err(ApiError::new(
            ProblemCode::CsrUnsupportedKey,
            "the key-agreement key must be an EC P-256 key (ECDH P-256)",
        ));
    }
    let device_key = x509_parser::parse_x509_certificate(&device.der)
        .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
        .map_err(|e| ApiError::internal(&e))?;
    if device_key == key.der_bytes() {
        return Err(invalid(
            "the key-agreement key must not be the device key: one key never serves both purposes"
                .into(),
        ));
    }
    let serial = Serial::random(&state.rng).map_err(|_| ApiError::internal(&"rng failure"))?;
    let spec = spec(state, device_id, zone, &serial, device.not_before);
    let issued = issue_key_agreement_certificate(&state.ca, &spec, device, &key)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Some(NewKeyAgreement {
        serial: serial.to_hex(),
        certificate_pem: issued.pem,
        device_certificate_pem: device.pem.clone(),
        endpoints: advertise.to_vec(),
    }))
}

/// What the registry records of a device certificate just issued (`serial`, `issued`), with
/// the key-agreement certificate the request asked for (see [`certify_key_agreement`]); and
/// that certificate's PEM for the answer.
pub(crate) fn certificate_record(
    state: &AppState,
    device_id: &DeviceId,
    zone: &Zone,
    (serial, issued): (&Serial, &IssuedCertificate),
    key_agreement_csr_pem: Option<&str>,
    advertise: &[String],
) -> Result<(NewCertificate, Option<String>), ApiError> {
    let key_agreement = certify_key_agreement(
        state,
        device_id,
        zone,
        issued,
        key_agreement_csr_pem,
        advertise,
    )?;
    let pem = key_agreement.as_ref().map(|k| k.certificate_pem.clone());
    let cert = NewCertificate {
        serial: serial.to_hex(),
        not_before: issued.not_before.unix_timestamp(),
        not_after: issued.not_after.unix_timestamp(),
        key_agreement,
    };
    Ok((cert, pem))
}

/// Checks the key source and signs the device certificate (about 80 µs of CPU; measured
/// against offloading to the blocking pool, running inline gives the higher throughput).
pub(crate) fn certify(
    state: &AppState,
    device_id: &DeviceId,
    zone: &Zone,
    serial: &Serial,
    now: OffsetDateTime,
    source: KeySource,
) -> Result<(IssuedCertificate, Option<String>), ApiError> {
    let spec = spec(state, device_id, zone, serial, now);
    match source {
        KeySource::Csr(pem_text) => {
            let key = check_csr_pem(&pem_text).map_err(|e| csr_problem(&e))?;
            let issued = issue_device_certificate(&state.ca, &spec, &key)
                .map_err(|e| ApiError::internal(&e))?;
            Ok((issued, None))
        }
        KeySource::Generate => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| ApiError::internal(&e))?;
            let issued = issue_device_certificate(&state.ca, &spec, &key)
                .map_err(|e| ApiError::internal(&e))?;
            Ok((issued, Some(key.serialize_pem())))
        }
    }
}
