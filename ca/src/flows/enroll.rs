//! Enrollment: bootstrap tokens (operators mint them), a device's first certificate (with a
//! CSR or a server-generated key), and TPM enrollment's first step, which checks the
//! endorsement and attestation keys and wraps a secret for credential activation. The second
//! TPM step is [`enroll`] with the recovered secret; `docs/agent-protocol.md` has the whole
//! exchange.

use super::issue::{certificate_record, certify, rfc3339, KeySource};
use crate::api::auth::token_problem;
use crate::api::problem::{bounded, ApiError};
use crate::api::AppState;
use crate::ids::{check_device_class, check_label, DeviceId, Serial, Zone};
use crate::store::{
    EnrollRefusal, NewActivation, NewBootstrapToken, NewDevice, TpmEnrollRefusal, TpmEnrollment,
};
use crate::tokens::{random_jti, BootstrapClaims, BOOTSTRAP_AUDIENCE, ISSUER};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use time::OffsetDateTime;
use vouch_attestor::credential::make_credential;
use vouch_attestor::endorsement::{check_endorsement, EkAccepted, EkRefusal};
use vouch_attestor::quote::check_attestation_key;
use vouch_attestor::tpm::Public;
use vouch_proto::enroll::{
    CreateTokenRequest, CreateTokenResponse, EnrollRequest, EnrollResponse, TpmChallenge,
    TpmEnrollStart, MAX_LABELS,
};
use vouch_proto::ProblemCode;

/// How long a credential activation may be answered, seconds.
pub(crate) const ACTIVATION_TTL_SECS: i64 = 300;

/// Largest EK certificate accepted (DER), bytes.
pub use vouch_attestor::endorsement::MAX_EK_CERT_BYTES;

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemCode::InvalidBody, detail)
}

/// Mints a one-time bootstrap token for a zone (optionally re-enrolling one TPM device), on
/// behalf of the operator `actor`, and records it.
pub async fn create_token(
    state: &AppState,
    actor: &str,
    req: CreateTokenRequest,
) -> Result<CreateTokenResponse, ApiError> {
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
            created_by: actor.to_owned(),
            created_at: now,
            expires_at: claims.exp,
        })
        .await?;
    state.metrics.tokens_created.inc();
    tracing::info!(token_id = %jti, zone = %zone, by = %actor, "bootstrap token created");
    let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp)
        .map(rfc3339)
        .unwrap_or_default();
    Ok(CreateTokenResponse {
        token,
        token_id: jti,
        expires_at,
        ca_sha256: claims.ca_sha256,
    })
}

/// Enrolls a device with a bootstrap token and a CSR, or a key the server generates; with a
/// TPM proof (the secret recovered by credential activation), binds the device to its TPM
/// or re-enrolls the device the token names. Token use, the device and its certificate are
/// written in one transaction that checks the token again.
pub async fn enroll(state: &AppState, req: EnrollRequest) -> Result<EnrollResponse, ApiError> {
    let result = enroll_checked(state, req).await;
    state.metrics.enrollment(match &result {
        Ok(_) => "issued",
        Err(e) => e.code.as_str(),
    });
    result
}

/// The claims of a bootstrap token whose signature, audience and expiry check out at `now`.
fn verify_bootstrap(
    state: &AppState,
    token: &str,
    now: OffsetDateTime,
) -> Result<BootstrapClaims, ApiError> {
    state
        .bootstrap_key
        .verify(
            token,
            BOOTSTRAP_AUDIENCE,
            now.unix_timestamp(),
            state.settings.clock_skew_secs,
        )
        .map_err(|e| token_problem(&e, "bootstrap"))
}

async fn enroll_checked(state: &AppState, req: EnrollRequest) -> Result<EnrollResponse, ApiError> {
    let now = state.clock.now();
    let claims = verify_bootstrap(state, &req.token, now)?;
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
    let (cert, key_agreement_certificate_pem) = certificate_record(
        state,
        &device_id,
        &zone,
        (&serial, &issued),
        req.key_agreement_csr_pem.as_deref(),
        &req.advertise,
    )?;
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
        super::revoke::publish_crl(state).await?;
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
        key_agreement_certificate_pem,
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

fn refused(code: ProblemCode, detail: impl Into<String>) -> ApiError {
    ApiError::new(code, detail)
}

/// Decodes a base64 TPM structure and parses it strictly.
fn tpm_public(field: &str, b64: &str) -> Result<(Vec<u8>, Public), ApiError> {
    // Base64 of the largest structure the parser takes, plus padding.
    if b64.len() > vouch_attestor::tpm::MAX_STRUCTURE_BYTES * 4 / 3 + 4 {
        return Err(refused(
            ProblemCode::TpmStructureInvalid,
            format!("`{field}` is too large"),
        ));
    }
    let bytes = B64.decode(b64).map_err(|_| {
        refused(
            ProblemCode::TpmStructureInvalid,
            format!("`{field}` is not base64"),
        )
    })?;
    let public = Public::parse(&bytes).map_err(|e| {
        refused(
            ProblemCode::TpmStructureInvalid,
            format!("`{field}`: {}", bounded(&e.to_string(), 200)),
        )
    })?;
    Ok((bytes, public))
}

/// TPM enrollment, step 1: checks the token (unused), the EK (see [`check_ek`]) and the AK
/// (an attestation key), refuses an EK bound to another device unless the token re-enrolls
/// that device, and returns a credential that only the TPM holding both keys can activate.
/// The activation is stored with a hash of its secret.
pub(crate) async fn start_tpm(
    state: &AppState,
    req: TpmEnrollStart,
) -> Result<TpmChallenge, ApiError> {
    let now = state.clock.now();
    let claims = verify_bootstrap(state, &req.token, now)?;
    match state.registry.token_unused(&claims.jti).await? {
        Some(true) => {}
        Some(false) => {
            return Err(ApiError::new(
                ProblemCode::TokenUsed,
                "bootstrap token has already been used",
            ))
        }
        None => {
            return Err(ApiError::new(
                ProblemCode::TokenInvalid,
                "bootstrap token is not known",
            ))
        }
    }
    let (ek_bytes, ek) = tpm_public("ek_public", &req.ek_public)?;
    let (ak_bytes, ak) = tpm_public("ak_public", &req.ak_public)?;
    check_ek(state, &ek, &ek_bytes, req.ek_certificate.as_deref(), now)?;
    check_attestation_key(&ak)
        .map_err(|e| refused(ProblemCode::NotAnAttestationKey, e.to_string()))?;
    // An EK already bound elsewhere can only come back through a token that re-enrolls
    // that very device; refuse early (the registry checks again when the token is used).
    if let Some(holder) = state.registry.device_of_ek(&ek_bytes).await? {
        if claims.reenroll_device.as_deref() != Some(holder.as_str()) {
            return Err(ApiError::new(
                ProblemCode::EkAlreadyEnrolled,
                "this endorsement key is already enrolled as another device; ask an operator for a re-enrollment token",
            ));
        }
    }

    let mut secret = [0u8; 32];
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&state.rng, &mut secret)
        .and_then(|()| ring::rand::SecureRandom::fill(&state.rng, &mut id))
        .map_err(|_| ApiError::internal(&"rng failure"))?;
    let made = make_credential(&ek, &ak.name(), &secret, &state.rng)
        .map_err(|e| refused(ProblemCode::TpmStructureInvalid, e.to_string()))?;
    let expires_at = now.unix_timestamp() + ACTIVATION_TTL_SECS;
    let mut secret_sha256 = [0u8; 32];
    secret_sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &secret).as_ref());
    let activation = NewActivation {
        id: hex::encode(id),
        token_jti: claims.jti,
        ek_public: ek_bytes,
        ak_public: ak_bytes,
        secret_sha256,
        created_at: now.unix_timestamp(),
        expires_at,
    };
    state.registry.create_activation(&activation).await?;
    Ok(TpmChallenge {
        activation_id: activation.id,
        id_object: B64.encode(&made.id_object),
        encrypted_secret: B64.encode(&made.encrypted_secret),
        expires_at: OffsetDateTime::from_unix_timestamp(expires_at)
            .map(rfc3339)
            .unwrap_or_default(),
    })
}

/// Whether this EK may enroll ([`check_endorsement`] with the server's settings), as a
/// problem if not. Taking an EK on first use (lab only) is logged each time.
fn check_ek(
    state: &AppState,
    ek: &Public,
    ek_bytes: &[u8],
    cert_b64: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let invalid = |detail: String| refused(ProblemCode::EkCertificateInvalid, detail);
    let certificate = match cert_b64 {
        None => None,
        Some(b64) if b64.len() > MAX_EK_CERT_BYTES * 4 / 3 + 4 => {
            return Err(invalid("the EK certificate is too large".into()))
        }
        Some(b64) => Some(
            B64.decode(b64)
                .map_err(|_| invalid("`ek_certificate` is not base64".into()))?,
        ),
    };
    let trust = state.settings.ek_trust();
    match check_endorsement(
        &trust,
        ek,
        ek_bytes,
        certificate.as_deref(),
        now.unix_timestamp(),
    ) {
        Ok(EkAccepted::TrustedOnFirstUse) => {
            tracing::warn!(
                ek_sha256 = %crate::store::ek_fingerprint(ek_bytes),
                "TPM endorsement key taken on first use (--tpm-trust-on-first-use): lab only"
            );
            Ok(())
        }
        Ok(EkAccepted::Allowlisted | EkAccepted::Certified) => Ok(()),
        Err(refusal) => {
            let code = match &refusal {
                EkRefusal::Unconfigured => ProblemCode::TpmEnrollmentUnconfigured,
                EkRefusal::CertificateRequired => ProblemCode::EkCertificateRequired,
                EkRefusal::CertificateInvalid(_) => ProblemCode::EkCertificateInvalid,
            };
            Err(refused(code, bounded(&refusal.to_string(), 300)))
        }
    }
}
