//! Public PKI endpoints (CRL, trust bundle) and operations endpoints (health, readiness,
//! metrics, the OpenAPI document).

use super::problem::ApiError;
use super::AppState;
use crate::flows::revoke::CrlAnswer;
use crate::metrics::ExpositionFormat;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use vouch_proto::ProblemCode;

/// Longest long-poll of `GET /v1/crl`, seconds.
pub const MAX_CRL_WAIT_SECS: u64 = 60;

/// `GET /v1/crl`'s query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CrlQuery {
    /// The CRL number the caller has (as `If-None-Match: "N"` says too): if it is still
    /// current, the answer waits up to `wait` seconds for the next one.
    #[param(minimum = 0)]
    pub after: Option<u64>,
    /// Seconds to wait for a CRL newer than the caller's (0 to 60; default 0).
    #[param(minimum = 0, maximum = 60)]
    pub wait: Option<u64>,
}

/// The CRL number an `If-None-Match` header names (`"N"` or `W/"N"`).
fn etag_number(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
    value
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// The current CRL (DER), signed by the issuing CA, with its number as the `ETag`. A new
/// one is signed on every revocation and when the stored one has used a quarter of its
/// validity. With the caller's number (`after` or `If-None-Match`) still current, `304`, or
/// with `wait`, the next CRL as soon as one is signed (a long-poll).
#[utoipa::path(get, path = "/v1/crl", params(CrlQuery),
    responses(
        (status = 200, content_type = "application/pkix-crl", body = Vec<u8>,
            headers(("ETag" = String, description = "The CRL number, quoted"))),
        (status = 304, description = "The caller's CRL is current",
            headers(("ETag" = String, description = "The CRL number, quoted"))),
        (status = 400, body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn crl(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<CrlQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::new(ProblemCode::InvalidQuery, e.body_text()))?;
    let known = query
        .after
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
        .or_else(|| etag_number(&headers));
    let wait = std::time::Duration::from_secs(query.wait.unwrap_or(0).min(MAX_CRL_WAIT_SECS));
    let etag = |n: i64| format!("\"{n}\"");
    Ok(
        match crate::flows::revoke::crl_after(&state, known, wait).await? {
            CrlAnswer::Current(crl) => (
                [
                    (header::CONTENT_TYPE, "application/pkix-crl".to_owned()),
                    (header::ETAG, etag(crl.number)),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                crl.der,
            )
                .into_response(),
            CrlAnswer::NotModified(n) => (
                axum::http::StatusCode::NOT_MODIFIED,
                [(header::ETAG, etag(n))],
            )
                .into_response(),
        },
    )
}

/// The root CA certificate (PEM): what devices and relying parties trust. Its `ETag` is the
/// SHA-256 of the PEM; `If-None-Match` with it answers `304`.
#[utoipa::path(get, path = "/v1/trust-bundle",
    responses((status = 200, content_type = "application/pem-certificate-chain", body = String,
                 headers(("ETag" = String, description = "SHA-256 of the bundle, hex, quoted"))),
              (status = 304, description = "The caller's bundle is current")))]
pub async fn trust_bundle(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> axum::response::Response {
    let pem = state.ca.root_pem();
    let etag = format!(
        "\"{}\"",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, pem.as_bytes()))
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        });
    if matches {
        return (axum::http::StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                "application/pem-certificate-chain".to_owned(),
            ),
            (header::ETAG, etag),
        ],
        pem.to_owned(),
    )
        .into_response()
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
