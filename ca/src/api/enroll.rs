//! `POST /v1/bootstrap-tokens`, `/v1/enroll` and `/v1/renew`: decode, call the flow
//! ([`crate::flows::enroll`], [`crate::flows::renew`]), encode.

use super::auth::{DeviceCaller, Operator};
use super::problem::{ApiError, ApiJson};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use vouch_proto::enroll::{
    CreateTokenRequest, CreateTokenResponse, EnrollRequest, EnrollResponse, RenewRequest,
    RevokeOperatorToken, RevokedOperatorToken,
};

/// Creates a one-time bootstrap token for a zone.
#[utoipa::path(post, path = "/v1/bootstrap-tokens", request_body = CreateTokenRequest,
    security(("operator_jwt" = [])),
    responses((status = 201, body = CreateTokenResponse), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_bootstrap_token(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    operator.require_write()?;
    let token = crate::flows::enroll::create_token(&state, &operator.actor(), req).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Revokes an operator token (by its id, as `vouch admin-token` prints it) before it
/// expires: every replica refuses it from now on (`401 token_revoked`). Admins only.
#[utoipa::path(post, path = "/v1/operator-tokens/revoke", request_body = RevokeOperatorToken,
    security(("operator_jwt" = [])),
    responses((status = 200, body = RevokedOperatorToken), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_operator_token(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(req): ApiJson<RevokeOperatorToken>,
) -> Result<Json<RevokedOperatorToken>, ApiError> {
    operator.require_admin()?;
    let revoked = crate::flows::operator_tokens::revoke(&state, &operator.actor(), req).await?;
    Ok(Json(revoked))
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
    let enrolled = crate::flows::enroll::enroll(&state, req).await?;
    Ok((StatusCode::CREATED, Json(enrolled)))
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
