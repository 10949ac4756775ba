//! Policy endpoints: decisions (`/v1/authorize`), the decision log, status and reload of the
//! policy sets, and the signed bundle for agents.

use super::auth::{Caller, Operator};
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::authz::{DecisionRequest, ReloadOutcome, SetStatus};
use crate::flows::devices::unreadable_query;
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

/// The active policy set as a signed bundle (compact JWS, see `authz::signed`) for agents
/// to verify against the trust bundle and cache. For devices (mTLS) and operators.
#[utoipa::path(get, path = "/v1/policy/bundle", security(("operator_jwt" = []), ("device_mtls" = [])),
    responses((status = 200, content_type = "application/jose", body = String),
              (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn bundle(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let jws = crate::flows::reload::bundle(&state)?;
    Ok((
        [(header::CONTENT_TYPE, crate::authz::signed::CONTENT_TYPE)],
        jws,
    ))
}
