//! Bootstrap tokens, enrollment and renewal.

use super::auth::{token_problem, DeviceCaller, Operator};
use super::problem::{bounded, ApiError, ApiJson};
use super::AppState;
use crate::ids::{check_device_class, check_label, DeviceId, Serial, Zone};
use crate::pki::csr::{check_csr_pem, CsrError};
use crate::pki::profile::{issue_device_certificate, DeviceCertificateSpec, IssuedCertificate};
use crate::store::{
    EnrollRefusal, NewBootstrapToken, NewCertificate, NewDevice, RenewRefusal, TpmEnrollRefusal,
    TpmEnrollment,
};
use crate::tokens::{random_jti, BootstrapClaims, BOOTSTRAP_AUDIENCE, ISSUER};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

/// Most labels a token may carry.
pub const MAX_LABELS: usize = 32;

/// `POST /v1/bootstrap-tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Zone the device will join: 1 to 63 lowercase letters, digits, `-`, `_`, `.`, starting
    /// with a letter or digit.
    #[schema(
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$",
        min_length = 1,
        max_length = 63
    )]
    pub zone: String,
    /// Token lifetime in seconds (default 3600, at most `--max-token-ttl`).
    #[schema(minimum = 60)]
    #[serde(default, deserialize_with = "vouch_policy::json::optional_integer")]
    pub ttl_seconds: Option<i64>,
    /// Labels the device will carry (at most 32; keys named like zones, values printable
    /// ASCII up to 255 characters).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Device class (reference values for attestation are chosen by it), named like a zone.
    #[schema(
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$",
        min_length = 1,
        max_length = 63
    )]
    pub device_class: Option<String>,
    /// An existing device this token re-enrolls, e.g. after its disk was wiped. Only a TPM
    /// enrollment can use such a token, and only with the EK bound to that device.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub reenroll_device: Option<String>,
}

/// `POST /v1/bootstrap-tokens` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenResponse {
    /// The one-time token (a JWT). Give it to the device; it is shown only here.
    pub token: String,
    /// The token id, as it appears in the audit log.
    pub token_id: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// SHA-256 of the root CA certificate, also inside the token.
    pub ca_sha256: String,
}

/// `POST /v1/enroll` body: a token and either a CSR or `generate_key: true`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The bootstrap token.
    pub token: String,
    /// PKCS#10 CSR, PEM. Names in it are ignored.
    pub csr_pem: Option<String>,
    /// Ask the server to generate the key pair (returned once, never stored).
    pub generate_key: Option<bool>,
    /// For a TPM device: the credential activation it answered (`POST /v1/enroll/tpm`).
    pub tpm: Option<TpmProof>,
}

/// Proof that the AK lives in the same TPM as the EK: the activated secret.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmProof {
    /// The `activation_id` of `POST /v1/enroll/tpm`.
    #[schema(max_length = 64)]
    pub activation_id: String,
    /// The secret `TPM2_ActivateCredential` recovered, base64.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64",
        max_length = 128
    )]
    pub secret: String,
}

/// Answer of enrollment and renewal.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// The registry's device id.
    pub device_id: String,
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// The zone in the certificate (subject OU).
    pub zone: String,
    /// Certificate serial, hex.
    pub serial: String,
    /// The device certificate, PEM.
    pub certificate_pem: String,
    /// Issuing CA then root CA, PEM.
    pub ca_chain_pem: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// Only with `generate_key`: the private key (PKCS#8 PEM). Not stored by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
}

/// `POST /v1/renew` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10 CSR, PEM, for the new key (or the same key).
    pub csr_pem: String,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Creates a one-time bootstrap token for a zone.
#[utoipa::path(post, path = "/v1/bootstrap-tokens", request_body = CreateTokenRequest,
    security(("operator_jwt" = [])),
    responses((status = 201, body = CreateTokenResponse), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn create_bootstrap_token(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    operator.require_write()?;
    let zone = Zone::parse(&req.zone).map_err(|e| invalid(e.to_string()))?;
    let ttl = req
        .ttl_seconds
        .unwrap_or(state.settings.default_token_ttl_secs);
    if !(60..=state.settings.max_token_ttl_secs).contains(&ttl) {
        return Err(invalid(format!(
            "ttl_seconds must be between 60 and {}",
            state.settings.max_token_ttl_secs
        )));
    }
    if req.labels.len() > MAX_LABELS {
        return Err(invalid(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in &req.labels {
        check_label(k, v).map_err(|e| invalid(e.to_string()))?;
    }
    if let Some(class) = &req.device_class {
        check_device_class(class).map_err(|e| invalid(e.to_string()))?;
    }
    if let Some(id) = &req.reenroll_device {
        let id =
            DeviceId::parse(id).ok_or_else(|| invalid("`reenroll_device` is not a device id"))?;
        match state.registry.device(id.as_str()).await? {
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "device_unknown",
                    "`reenroll_device` names no device",
                ))
            }
            Some(d) if d.status != crate::store::DeviceStatus::Active => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "device_revoked",
                    "a revoked device cannot be re-enrolled",
                ))
            }
            // Re-enrollment is proven by the TPM bound at enrollment: a device without one
            // has nothing to prove itself with.
            Some(d) if d.ek_sha256.is_none() => return Err(ApiError::new(
                StatusCode::CONFLICT,
                "device_has_no_tpm",
                "a device enrolled without a TPM cannot be re-enrolled; enroll it as a new device",
            )),
            // A re-enrolled device keeps its zone (the registry's and the certificate's).
            Some(d) if d.zone != zone.as_str() => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "zone_mismatch",
                    format!(
                        "the device is in zone `{}`; a re-enrollment token must name it",
                        d.zone
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let now = state.clock.unix();
    let jti = random_jti(&state.rng).map_err(|_| ApiError::internal(&"rng failure"))?;
    let claims = BootstrapClaims {
        iss: ISSUER.into(),
        aud: BOOTSTRAP_AUDIENCE.into(),
        jti: jti.clone(),
        iat: now,
        exp: now + ttl,
        zone: zone.as_str().to_owned(),
        labels: req.labels.clone(),
        device_class: req.device_class.clone(),
        trust_domain: state.trust_domain.as_str().to_owned(),
        ca_sha256: state.ca.root_fingerprint().to_owned(),
        reenroll_device: req.reenroll_device.clone(),
    };
    let token = state
        .bootstrap_key
        .sign(&claims)
        .map_err(|e| ApiError::internal(&e))?;
    state
        .registry
        .create_bootstrap_token(&NewBootstrapToken {
            jti: jti.clone(),
            zone: claims.zone.clone(),
            labels: claims.labels.clone(),
            device_class: claims.device_class.clone(),
            reenroll_device: claims.reenroll_device.clone(),
            created_by: operator.actor(),
            created_at: now,
            expires_at: claims.exp,
        })
        .await?;
    state.metrics.tokens_created.inc();
    tracing::info!(token_id = %jti, zone = %zone, by = %operator.actor(), "bootstrap token created");
    let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp)
        .map(rfc3339)
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse {
            token,
            token_id: jti,
            expires_at,
            ca_sha256: claims.ca_sha256,
        }),
    ))
}

fn csr_problem(e: &CsrError) -> ApiError {
    let (status, code) = match e {
        CsrError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "csr_too_large"),
        CsrError::NotPem | CsrError::Malformed | CsrError::TrailingData => {
            (StatusCode::BAD_REQUEST, "csr_malformed")
        }
        CsrError::UnsupportedKey(_) | CsrError::RsaKeySize { .. } => {
            (StatusCode::BAD_REQUEST, "csr_unsupported_key")
        }
        CsrError::SignatureAlgorithm(_) => (StatusCode::BAD_REQUEST, "csr_unsupported_algorithm"),
        CsrError::BadSignature => (StatusCode::BAD_REQUEST, "csr_bad_signature"),
    };
    ApiError::new(status, code, bounded(&e.to_string(), 300))
}

/// Enrolls a new device with a bootstrap token and a CSR or server-side key generation.
#[utoipa::path(post, path = "/v1/enroll", request_body = EnrollRequest,
    responses((status = 201, body = EnrollResponse),
        (status = 400, description = "the CSR is not a PKCS#10 request Vouch accepts: malformed, an unsupported key or algorithm, or a bad signature (`csr_malformed`, `csr_unsupported_key`, `csr_unsupported_algorithm`, `csr_bad_signature`)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "the body does not fit (`invalid_body`: neither or both of `csr_pem` and `generate_key`, `tpm` fields not base64), or the token re-enrolls a device and needs a TPM proof (`token_requires_tpm`)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let result = enroll_inner(&state, req).await;
    let outcome = match &result {
        Ok(_) => "issued",
        Err(e) => e.code,
    };
    state.metrics.enrollment(outcome);
    result.map(|r| (StatusCode::CREATED, Json(r)))
}

async fn enroll_inner(state: &AppState, req: EnrollRequest) -> Result<EnrollResponse, ApiError> {
    let now = state.clock.now();
    let claims: BootstrapClaims = state
        .bootstrap_key
        .verify(
            &req.token,
            BOOTSTRAP_AUDIENCE,
            now.unix_timestamp(),
            state.settings.clock_skew_secs,
        )
        .map_err(|e| token_problem(&e, "bootstrap"))?;
    let zone = Zone::parse(&claims.zone).map_err(|e| ApiError::internal(&e))?;

    let device_id = DeviceId::random(&state.rng).map_err(|_| ApiError::internal(&"rng failure"))?;
    let serial = Serial::random(&state.rng).map_err(|_| ApiError::internal(&"rng failure"))?;
    let source = match (req.csr_pem, req.generate_key) {
        (Some(csr_pem), None | Some(false)) => KeySource::Csr(csr_pem),
        (None, Some(true)) => KeySource::Generate,
        _ => {
            return Err(invalid(
                "give exactly one of `csr_pem` or `generate_key: true`",
            ))
        }
    };
    if claims.reenroll_device.is_some() && req.tpm.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "token_requires_tpm",
            "this token re-enrolls a device: only a TPM enrollment with that device's endorsement key can use it",
        ));
    }
    let secret = match &req.tpm {
        None => None,
        Some(proof) if proof.secret.len() <= 128 && proof.activation_id.len() <= 64 => Some(
            B64.decode(&proof.secret)
                .map_err(|_| invalid("`tpm.secret` is not base64"))?,
        ),
        Some(_) => return Err(invalid("`tpm` fields are too long")),
    };
    // A re-enrollment keeps the device's id and so its SPIFFE ID.
    let device_id = match &claims.reenroll_device {
        Some(id) => {
            DeviceId::parse(id).ok_or_else(|| ApiError::internal(&"token names a bad device id"))?
        }
        None => device_id,
    };
    let (issued, private_key_pem) = certify(state, &device_id, &zone, &serial, now, source)?;

    let spiffe_id = device_id.spiffe_id(&state.trust_domain);
    let device = NewDevice {
        id: device_id.as_str().to_owned(),
        spiffe_id: spiffe_id.clone(),
        zone: zone.as_str().to_owned(),
        device_class: claims.device_class.clone(),
        labels: claims.labels.clone(),
    };
    let cert = NewCertificate {
        serial: serial.to_hex(),
        not_before: issued.not_before.unix_timestamp(),
        not_after: issued.not_after.unix_timestamp(),
    };
    let refusal = match (&req.tpm, &secret) {
        (Some(proof), Some(secret)) => state
            .registry
            .enroll_tpm(&TpmEnrollment {
                jti: &claims.jti,
                activation_id: &proof.activation_id,
                secret,
                device: &device,
                reenroll: claims.reenroll_device.as_deref(),
                cert: &cert,
                now: now.unix_timestamp(),
                skew: state.settings.clock_skew_secs,
            })
            .await?
            .err(),
        _ => state
            .registry
            .enroll(
                &claims.jti,
                &device,
                &cert,
                now.unix_timestamp(),
                state.settings.clock_skew_secs,
            )
            .await?
            .err()
            .map(TpmEnrollRefusal::Token),
    };
    if let Some(refusal) = refusal {
        return Err(enroll_refused(refusal));
    }
    if claims.reenroll_device.is_some() {
        // The re-enrollment revoked the certificates it supersedes: say so at once, and stop
        // answering them from memory here.
        state.tpm_identities.forget_device(device_id.as_str());
        super::ops::publish_crl(state).await?;
    }
    tracing::info!(device_id = %device_id, zone = %zone, serial = %cert.serial,
        server_keygen = private_key_pem.is_some(), "device enrolled");
    Ok(EnrollResponse {
        device_id: device.id,
        spiffe_id,
        zone: device.zone,
        serial: cert.serial,
        certificate_pem: issued.pem,
        ca_chain_pem: state.ca.chain_pem().to_owned(),
        not_after: rfc3339(issued.not_after),
        private_key_pem,
    })
}

fn enroll_refused(refusal: TpmEnrollRefusal) -> ApiError {
    let (status, code) = match refusal {
        TpmEnrollRefusal::Token(EnrollRefusal::TokenUsed) => (StatusCode::FORBIDDEN, "token_used"),
        TpmEnrollRefusal::Token(EnrollRefusal::TokenExpired) => {
            (StatusCode::UNAUTHORIZED, "token_expired")
        }
        TpmEnrollRefusal::Token(EnrollRefusal::TokenUnknown) => {
            (StatusCode::UNAUTHORIZED, "token_invalid")
        }
        TpmEnrollRefusal::ActivationInvalid => (StatusCode::FORBIDDEN, "activation_invalid"),
        TpmEnrollRefusal::EkMismatch => (StatusCode::FORBIDDEN, "ek_mismatch"),
        TpmEnrollRefusal::EkAlreadyEnrolled => (StatusCode::CONFLICT, "ek_already_enrolled"),
        TpmEnrollRefusal::DeviceUnknown => (StatusCode::NOT_FOUND, "device_unknown"),
        TpmEnrollRefusal::DeviceRevoked => (StatusCode::CONFLICT, "device_revoked"),
        TpmEnrollRefusal::DeviceWithoutTpm => (StatusCode::CONFLICT, "device_has_no_tpm"),
        TpmEnrollRefusal::ZoneMismatch => (StatusCode::CONFLICT, "zone_mismatch"),
    };
    ApiError::new(status, code, refusal.to_string())
}

/// Where the certified key comes from.
enum KeySource {
    /// A device's CSR (PEM), checked before use.
    Csr(String),
    /// A P-256 key generated here and returned once.
    Generate,
}

/// Checks the key source and signs the device certificate (about 80 µs of CPU; measured
/// against offloading to the blocking pool, running inline gives the higher throughput).
fn certify(
    state: &AppState,
    device_id: &DeviceId,
    zone: &Zone,
    serial: &Serial,
    now: OffsetDateTime,
    source: KeySource,
) -> Result<(IssuedCertificate, Option<String>), ApiError> {
    let spec = DeviceCertificateSpec {
        device_id,
        trust_domain: &state.trust_domain,
        zone,
        serial,
        now,
        lifetime: Duration::seconds(state.settings.cert_lifetime_secs),
        crl_url: &state.settings.crl_url,
    };
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

/// Issues a new certificate to a device that presents its current one over mTLS.
#[utoipa::path(post, path = "/v1/renew", request_body = RenewRequest,
    security(("device_mtls" = [])),
    responses((status = 201, body = EnrollResponse),
        (status = 400, description = "the CSR is not a PKCS#10 request Vouch accepts (`csr_malformed`, `csr_unsupported_key`, `csr_unsupported_algorithm`, `csr_bad_signature`)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn renew(
    State(state): State<AppState>,
    caller: DeviceCaller,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let result = renew_inner(&state, caller, req).await;
    state.metrics.renewal(match &result {
        Ok(_) => "issued",
        Err(e) => e.code,
    });
    result.map(|r| (StatusCode::CREATED, Json(r)))
}

fn renew_refused(refusal: RenewRefusal) -> ApiError {
    let code = match refusal {
        RenewRefusal::UnknownCertificate => "device_unknown",
        RenewRefusal::DeviceRevoked => "device_revoked",
        RenewRefusal::CertificateRevoked => "certificate_revoked",
        RenewRefusal::DeviceQuarantined => "device_quarantined",
        RenewRefusal::DeviceStale => "device_stale",
    };
    ApiError::new(StatusCode::FORBIDDEN, code, refusal.to_string())
}

async fn renew_inner(
    state: &AppState,
    caller: DeviceCaller,
    req: RenewRequest,
) -> Result<EnrollResponse, ApiError> {
    let old_serial = caller.serial.to_hex();
    // Early refusal before spending a signature; the registry checks again atomically.
    let (device, certificate_revoked) = state
        .registry
        .device_by_serial(&old_serial)
        .await?
        .ok_or_else(|| renew_refused(RenewRefusal::UnknownCertificate))?;
    caller.check_record(&device.id)?;
    if device.status != crate::store::DeviceStatus::Active {
        return Err(renew_refused(RenewRefusal::DeviceRevoked));
    }
    if certificate_revoked {
        return Err(renew_refused(RenewRefusal::CertificateRevoked));
    }
    // A device that failed attestation or went silent gets no new certificate (checked again
    // by the registry in the transaction that records it).
    match device.attestation {
        crate::store::AttestationState::Quarantined => {
            return Err(renew_refused(RenewRefusal::DeviceQuarantined))
        }
        crate::store::AttestationState::Stale => {
            return Err(renew_refused(RenewRefusal::DeviceStale))
        }
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
    let cert = NewCertificate {
        serial: serial.to_hex(),
        not_before: issued.not_before.unix_timestamp(),
        not_after: issued.not_after.unix_timestamp(),
    };
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
    })
}
