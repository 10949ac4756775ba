//! Policy endpoints: decisions (`/v1/authorize`), the decision log, status and reload of the
//! policy sets, and the signed bundle for agents.

use super::auth::{Caller, Operator};
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::authz::{DecisionRequest, ReloadOutcome, SetStatus};
use crate::flows::devices::unreadable_query;
use crate::flows::reload::BundleAnswer;
use crate::store::DecisionRecord;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use vouch_proto::policy::{
    AuthorizeResponse, DecisionQuery, DecisionUpload, DecisionUploadOutcome,
};

pub use crate::flows::authorize::{facts_of, MAX_DECISION_PAGE};

/// Decides whether a device may do an action on a device or zone, with the device facts of
/// the registry, and logs the decision before answering it.
#[utoipa::path(post, path = "/v1/authorize", request_body = DecisionRequest,
    security(("operator_jwt" = []), ("device_mtls" = [])),
    responses((status = 200, body = AuthorizeResponse),
              (status = 422, description = "the action, data type or resource is not in the active policy schema, or the request does not fit it (`invalid_request`)", body = super::problem::Problem, content_type = "application/problem+json"),
              (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json"),
              (status = 503, body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn authorize(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<DecisionRequest>,
) -> Result<Json<AuthorizeResponse>, ApiError> {
    crate::flows::authorize::authorize(&state, &caller, req)
        .await
        .map(Json)
}

/// A page of the decision log.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DecisionPage {
    /// Decisions, newest first.
    pub decisions: Vec<DecisionRecord>,
    /// Pass as `cursor` for older decisions; absent on the last page.
    pub next_cursor: Option<i64>,
}

/// Reads the decision log, newest first.
#[utoipa::path(get, path = "/v1/policy/decisions", params(DecisionQuery),
    security(("operator_jwt" = [])),
    responses((status = 200, body = DecisionPage), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn decisions(
    State(state): State<AppState>,
    _operator: Operator,
    query: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<Json<DecisionPage>, ApiError> {
    let Query(q) = query.map_err(|e| unreadable_query(&e.body_text()))?;
    crate::flows::authorize::decisions(&state, q)
        .await
        .map(Json)
}

/// Appends decisions a device's sidecar made about messages (sent or received) to the
/// decision log, with where they were made. Idempotent: a decision already uploaded is
/// counted in `already_recorded` and not logged again.
#[utoipa::path(post, path = "/v1/policy/decisions", request_body = DecisionUpload,
    security(("device_mtls" = [])),
    responses((status = 200, body = DecisionUploadOutcome),
              (status = 422, description = "a decision does not parse or is out of bounds (`invalid_request`); nothing is logged", body = super::problem::Problem, content_type = "application/problem+json"),
              (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json"),
              (status = 503, body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn upload_decisions(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(upload): ApiJson<DecisionUpload>,
) -> Result<Json<DecisionUploadOutcome>, ApiError> {
    crate::flows::agent_decisions::record(&state, &caller, upload)
        .await
        .map(Json)
}

/// `GET /v1/policy/status`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyStatus {
    /// The enforced set.
    pub active: SetStatus,
    /// The candidate set evaluated in shadow mode, if configured.
    pub shadow: Option<SetStatus>,
}

/// The active policy set's version, load time and last load error; the same for the shadow
/// set.
#[utoipa::path(get, path = "/v1/policy/status", security(("operator_jwt" = [])),
    responses((status = 200, body = PolicyStatus), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn status(State(state): State<AppState>, _operator: Operator) -> Json<PolicyStatus> {
    Json(crate::flows::reload::status(&state))
}

/// The answer to a reload.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ReloadResponse {
    /// What happened to the active set.
    pub active: ReloadOutcome,
    /// What happened to the shadow set.
    pub shadow: ReloadOutcome,
    /// Status after the reload.
    pub status: PolicyStatus,
}

impl ReloadResponse {
    /// Whether a set failed to load (and the previous one stays active).
    pub fn failed(&self) -> bool {
        matches!(self.active, ReloadOutcome::Failed(_))
            || matches!(self.shadow, ReloadOutcome::Failed(_))
    }
}

/// Re-reads the policy directories now. A set that does not load leaves the previous one
/// active and is answered 422 `policy_invalid` with every problem.
#[utoipa::path(post, path = "/v1/policy/reload", security(("operator_jwt" = [])),
    responses((status = 200, body = ReloadResponse), (status = 422, body = ReloadResponse),
              (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn reload(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<impl IntoResponse, ApiError> {
    operator.require_write()?;
    let answer = crate::flows::reload::reload_now(&state, &operator.actor()).await?;
    let status = if answer.failed() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)))
}

/// Query of `GET /v1/policy/bundle`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    /// The policy version the caller has (as `If-None-Match: "VERSION"` says too): if it is
    /// still the active one, the answer waits up to `wait` seconds for another.
    #[param(max_length = 128)]
    pub after: Option<String>,
    /// Seconds to wait for another version than the caller's (0 to 60; default 0).
    #[param(minimum = 0, maximum = 60)]
    pub wait: Option<u64>,
}

/// Longest long-poll of the bundle, seconds.
pub const MAX_BUNDLE_WAIT_SECS: u64 = 60;

/// The active policy set as a signed bundle (compact JWS, see `authz::signed`) for agents
/// to verify against the trust bundle and cache. For devices (mTLS) and operators. The
/// `ETag` is the policy version; a caller that names the active version (`after` or
/// `If-None-Match`) gets `304`, after waiting up to `wait` seconds for another version.
#[utoipa::path(get, path = "/v1/policy/bundle", params(BundleQuery),
    security(("operator_jwt" = []), ("device_mtls" = [])),
    responses((status = 200, content_type = "application/jose", body = String,
                 headers(("ETag" = String, description = "The policy version, quoted"))),
              (status = 304, description = "The caller's version is the active one",
                 headers(("ETag" = String, description = "The policy version, quoted"))),
              (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn bundle(
    State(state): State<AppState>,
    _caller: Caller,
    headers: axum::http::HeaderMap,
    query: Result<Query<BundleQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let Query(q) = query.map_err(|e| unreadable_query(&e.body_text()))?;
    if q.after.as_ref().is_some_and(|a| a.chars().count() > 128) {
        return Err(ApiError::new(
            vouch_proto::ProblemCode::InvalidQuery,
            "after has at most 128 characters",
        ));
    }
    let known = q.after.or_else(|| {
        let value = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
        let quoted = value.trim_start_matches("W/");
        Some(quoted.trim_matches('"').to_owned())
    });
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0).min(MAX_BUNDLE_WAIT_SECS));
    let etag = |v: &str| format!("\"{v}\"");
    Ok(
        match crate::flows::reload::bundle_changed(&state, known.as_deref(), wait).await? {
            BundleAnswer::Current { jws, version } => (
                [
                    (
                        header::CONTENT_TYPE,
                        crate::authz::signed::CONTENT_TYPE.to_owned(),
                    ),
                    (header::ETAG, etag(&version)),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                jws,
            )
                .into_response(),
            BundleAnswer::NotModified(version) => {
                (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(&version))]).into_response()
            }
        },
    )
}
