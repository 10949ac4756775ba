//! Bootstrap tokens, enrollment and renewal.

use super::auth::{token_problem, DeviceCaller, Operator};
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::flows::issue::{certify, rfc3339, KeySource};
use crate::ids::{check_device_class, check_label, DeviceId, Serial, Zone};
use crate::store::{
    EnrollRefusal, NewBootstrapToken, NewCertificate, NewDevice, TpmEnrollRefusal, TpmEnrollment,
};
use crate::tokens::{random_jti, BootstrapClaims, BOOTSTRAP_AUDIENCE, ISSUER};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use time::OffsetDateTime;
use vouch_proto::enroll::{
    CreateTokenRequest, CreateTokenResponse, EnrollRequest, EnrollResponse, RenewRequest,
    MAX_LABELS,
};
use vouch_proto::ProblemCode;

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemCode::InvalidBody, detail)
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
                    ProblemCode::DeviceNotFound,
                    "`reenroll_device` names no device",
                ))
            }
            Some(d) if d.status != crate::store::DeviceStatus::Active => {
                return Err(ApiError::new(
                    ProblemCode::DeviceAlreadyRevoked,
                    "a revoked device cannot be re-enrolled",
                ))
            }
            // Re-enrollment is proven by the TPM bound at enrollment: a device without one
            // has nothing to prove itself with.
            Some(d) if d.ek_sha256.is_none() => return Err(ApiError::new(
                ProblemCode::DeviceHasNoTpm,
                "a device enrolled without a TPM cannot be re-enrolled; enroll it as a new device",
            )),
            // A re-enrolled device keeps its zone (the registry's and the certificate's).
            Some(d) if d.zone != zone.as_str() => {
                return Err(ApiError::new(
                    ProblemCode::ZoneMismatch,
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
        Err(e) => e.code.as_str(),
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
            ProblemCode::TokenRequiresTpm,
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
    let code = match refusal {
        TpmEnrollRefusal::Token(EnrollRefusal::TokenUsed) => ProblemCode::TokenUsed,
        TpmEnrollRefusal::Token(EnrollRefusal::TokenExpired) => ProblemCode::TokenExpired,
        TpmEnrollRefusal::Token(EnrollRefusal::TokenUnknown) => ProblemCode::TokenInvalid,
        TpmEnrollRefusal::ActivationInvalid => ProblemCode::ActivationInvalid,
        TpmEnrollRefusal::EkMismatch => ProblemCode::EkMismatch,
        TpmEnrollRefusal::EkAlreadyEnrolled => ProblemCode::EkAlreadyEnrolled,
        TpmEnrollRefusal::DeviceUnknown => ProblemCode::DeviceNotFound,
        TpmEnrollRefusal::DeviceRevoked => ProblemCode::DeviceAlreadyRevoked,
        TpmEnrollRefusal::DeviceWithoutTpm => ProblemCode::DeviceHasNoTpm,
        TpmEnrollRefusal::ZoneMismatch => ProblemCode::ZoneMismatch,
    };
    ApiError::new(code, refusal.to_string())
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
    let result = crate::flows::renew::renew(&state, &caller, req, std::future::ready(())).await;
    state.metrics.renewal(match &result {
        Ok(_) => "issued",
        Err(e) => e.code.as_str(),
    });
    result.map(|r| (StatusCode::CREATED, Json(r)))
}
