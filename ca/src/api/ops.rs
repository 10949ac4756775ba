//! Public PKI endpoints (CRL, trust bundle) and operations endpoints (health, readiness,
//! metrics, the OpenAPI document).

use super::problem::ApiError;
use super::AppState;
use crate::metrics::ExpositionFormat;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use vouch_proto::ProblemCode;

/// The current CRL (DER), signed by the issuing CA. A new one is signed on every revocation
/// and when the stored one has used a quarter of its validity.
#[utoipa::path(get, path = "/v1/crl",
    responses((status = 200, content_type = "application/pkix-crl", body = Vec<u8>)))]
pub async fn crl(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let crl = crate::flows::revoke::current_crl(&state).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], crl.der))
}

/// The root CA certificate (PEM): what devices and relying parties trust.
#[utoipa::path(get, path = "/v1/trust-bundle",
    responses((status = 200, content_type = "application/pem-certificate-chain", body = String)))]
pub async fn trust_bundle(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        state.ca.root_pem().to_owned(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz",
    responses((status = 200, body = String), (status = 503, body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    crate::flows::devices::ready(&state).await.map(|()| "ready")
}

/// Prometheus metrics: the text format 0.0.4 by default, OpenMetrics 1.0 when `Accept`
/// prefers `application/openmetrics-text`.
#[utoipa::path(get, path = "/metrics", responses((status = 200,
    content((String = "text/plain"), (String = "application/openmetrics-text")))))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = ExpositionFormat::negotiate(accept);
    let text = state
        .metrics
        .encode_as(format)
        .map_err(|e| ApiError::internal(&e))?;
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        text,
    ))
}

/// The OpenAPI document, generated from the code.
pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(super::doc::document(&state.settings))
}

/// A known route asked with a method it does not answer (axum adds the `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ProblemCode::MethodNotAllowed,
        "this endpoint does not answer that method; see the `Allow` header",
    )
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(ProblemCode::NotFound, "no such endpoint")
}
