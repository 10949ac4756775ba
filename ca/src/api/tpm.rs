//! `POST /v1/enroll/tpm`: TPM enrollment, step 1 ([`crate::flows::enroll::start_tpm`]).

use super::problem::{ApiError, ApiJson};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use vouch_proto::enroll::{TpmChallenge, TpmEnrollStart};

/// Starts the enrollment of a TPM device: checks the token, the EK (and its certificate
/// against the configured TPM manufacturer roots) and the AK, and returns a credential that
/// only the TPM holding both keys can activate.
#[utoipa::path(post, path = "/v1/enroll/tpm", request_body = TpmEnrollStart,
    responses((status = 201, body = TpmChallenge),
        (status = 422, description = "the EK or AK is not a TPM structure Vouch accepts, the EK is not trusted, or the AK is not an attestation key (`tpm_structure_invalid`, `ek_certificate_invalid`, `ek_certificate_required`, `not_an_attestation_key`)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn enroll_tpm_start(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TpmEnrollStart>,
) -> Result<(StatusCode, Json<TpmChallenge>), ApiError> {
    let challenge = crate::flows::enroll::start_tpm(&state, req).await?;
    Ok((StatusCode::CREATED, Json(challenge)))
}
