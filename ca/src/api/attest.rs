//! `POST /v1/attest/challenge` and `/v1/attest/quote`: decode, call
//! [`crate::flows::attest`], encode.

use super::auth::DeviceCaller;
use super::problem::{ApiError, ApiJson};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use vouch_proto::attest::{AttestChallenge, AttestOutcome, QuoteSubmission};

pub use crate::flows::attest::MAX_QUOTE_BODY_BYTES;

/// Issues a fresh single-use nonce and the PCR selection to quote.
#[utoipa::path(post, path = "/v1/attest/challenge", security(("device_mtls" = [])),
    responses((status = 201, body = AttestChallenge), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn challenge(
    State(state): State<AppState>,
    caller: DeviceCaller,
) -> Result<(StatusCode, Json<AttestChallenge>), ApiError> {
    let challenge = crate::flows::attest::challenge(&state, &caller).await?;
    Ok((StatusCode::CREATED, Json(challenge)))
}

/// Verifies a quote and records the result: `active` on a pass, `quarantined` (with the
/// reason) on any failure.
#[utoipa::path(post, path = "/v1/attest/quote", request_body = QuoteSubmission,
    security(("device_mtls" = [])),
    responses((status = 200, body = AttestOutcome),
        (status = 422, description = "the quote, signature, PCR values or event log do not parse or do not verify (`attestation_failed`): the device is quarantined", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn quote(
    State(state): State<AppState>,
    caller: DeviceCaller,
    ApiJson(req): ApiJson<QuoteSubmission>,
) -> Result<Json<AttestOutcome>, ApiError> {
    crate::flows::attest::quote(&state, &caller, req)
        .await
        .map(Json)
}
