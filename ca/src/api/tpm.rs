//! Enrollment of a TPM device, step 1: the device presents its endorsement key (EK), with its
//! certificate, and its attestation key (AK); the server checks them and wraps a secret that
//! only the TPM holding both keys can recover (credential activation). Step 2 is
//! `POST /v1/enroll` with the recovered secret (see `enroll.rs`); `docs/agent-protocol.md`
//! has the whole exchange.

use super::auth::token_problem;
use super::problem::{bounded, ApiError, ApiJson};
use super::AppState;
use crate::store::NewActivation;
use crate::tokens::{BootstrapClaims, BOOTSTRAP_AUDIENCE};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use vouch_attestor::credential::make_credential;
use vouch_attestor::quote::check_attestation_key;
use vouch_attestor::tpm::{Public, PublicKey};
use vouch_proto::enroll::{TpmChallenge, TpmEnrollStart};
use vouch_proto::ProblemCode;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a credential activation may be answered, seconds.
pub const ACTIVATION_TTL_SECS: i64 = 300;

/// Largest EK certificate accepted (DER), bytes.
pub const MAX_EK_CERT_BYTES: usize = 8 * 1024;

/// Deepest EK certificate chain followed to a configured root.
const MAX_CHAIN: usize = 4;

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

/// Starts the enrollment of a TPM device: checks the token, the EK (and its certificate
/// against the configured TPM manufacturer roots) and the AK, and returns a credential that
/// only the TPM holding both keys can activate.
#[utoipa::path(post, path = "/v1/enroll/tpm", request_body = TpmEnrollStart,
    responses((status = 201, body = TpmChallenge),
        (status = 422, description = "the EK or AK is not a TPM structure Vouch accepts, the EK is not trusted, or the AK is not an attestation key (`tpm_structure_invalid`, `ek_certificate_invalid`, `ek_certificate_required`, `not_an_attestation_key`)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn enroll_tpm_start(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TpmEnrollStart>,
) -> Result<(StatusCode, Json<TpmChallenge>), ApiError> {
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
    check_endorsement(
        &state.settings,
        &ek,
        &ek_bytes,
        req.ek_certificate.as_deref(),
        now,
    )?;
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
    Ok((
        StatusCode::CREATED,
        Json(TpmChallenge {
            activation_id: activation.id,
            id_object: B64.encode(&made.id_object),
            encrypted_secret: B64.encode(&made.encrypted_secret),
            expires_at: OffsetDateTime::from_unix_timestamp(expires_at)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default(),
        }),
    ))
}

/// Whether this EK may enroll. An EK on the allowlist may come without a certificate; any
/// other must present one that chains to a configured root (through the configured
/// intermediates), is valid now, and certifies the EK's own key. With neither roots nor an
/// allowlist no EK is trusted, unless the lab-only trust on first use is switched on.
fn check_endorsement(
    settings: &super::Settings,
    ek: &Public,
    ek_bytes: &[u8],
    cert_b64: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let invalid = |detail: String| refused(ProblemCode::EkCertificateInvalid, detail);
    let (roots, allowlist) = (&settings.tpm_roots, &settings.tpm_ek_allowlist);
    if roots.is_empty() && allowlist.is_empty() {
        if settings.tpm_trust_on_first_use {
            tracing::warn!(
                ek_sha256 = %crate::store::ek_fingerprint(ek_bytes),
                "TPM endorsement key taken on first use (--tpm-trust-on-first-use): lab only"
            );
            return Ok(());
        }
        return Err(ApiError::new(
            ProblemCode::TpmEnrollmentUnconfigured,
            "this server trusts no TPM yet: its operator must configure TPM manufacturer roots (--tpm-roots) or an EK allowlist (--tpm-ek-allowlist)",
        ));
    }
    if allowlist.contains(&crate::store::ek_fingerprint(ek_bytes)) {
        return Ok(());
    }
    let Some(cert_b64) = cert_b64 else {
        return Err(refused(
            ProblemCode::EkCertificateRequired,
            "this server enrolls only TPMs whose EK is on its allowlist or whose EK certificate chains to a configured manufacturer root",
        ));
    };
    if cert_b64.len() > MAX_EK_CERT_BYTES * 4 / 3 + 4 {
        return Err(invalid("the EK certificate is too large".into()));
    }
    let der = B64
        .decode(cert_b64)
        .map_err(|_| invalid("`ek_certificate` is not base64".into()))?;
    let (rest, cert) = X509Certificate::from_der(&der)
        .map_err(|e| invalid(format!("the EK certificate does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the EK certificate".into()));
    }
    // The certificate must be for this EK.
    let same_key = match (cert.public_key().parsed(), &ek.key) {
        (Ok(x509_parser::public_key::PublicKey::RSA(rsa)), PublicKey::Rsa { modulus, .. }) => {
            trim(rsa.modulus) == trim(modulus)
        }
        _ => false,
    };
    if !same_key {
        return Err(invalid(
            "the EK certificate does not certify this endorsement key".into(),
        ));
    }
    let at = x509_parser::time::ASN1Time::from_timestamp(now.unix_timestamp())
        .map_err(|_| ApiError::internal(&"time out of range"))?;
    let authorities: Vec<X509Certificate<'_>> = roots
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    let mut current = cert;
    for _ in 0..MAX_CHAIN {
        if !current.validity().is_valid_at(at) {
            return Err(invalid(format!(
                "certificate `{}` is not valid now",
                bounded(&current.subject().to_string(), 120)
            )));
        }
        let issuer = authorities.iter().find(|ca| {
            let is_ca = matches!(ca.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
            is_ca
                && ca.subject().as_raw() == current.issuer().as_raw()
                && current.verify_signature(Some(ca.public_key())).is_ok()
        });
        let Some(issuer) = issuer else {
            return Err(invalid(
                "the EK certificate does not chain to a configured TPM manufacturer root".into(),
            ));
        };
        if issuer.subject().as_raw() == issuer.issuer().as_raw() {
            return if issuer.validity().is_valid_at(at) {
                Ok(())
            } else {
                Err(invalid("the TPM manufacturer root is not valid now".into()))
            };
        }
        current = issuer.clone();
    }
    Err(invalid("the EK certificate chain is too long".into()))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}
