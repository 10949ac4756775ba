//! Policy endpoints: decisions (`/v1/authorize`), the decision log, status and reload of the
//! policy sets, and the signed bundle for agents.

use super::auth::{certificate_revoked_problem, DeviceCaller, Operator};
use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::authz::{DecisionRequest, ReloadOutcome, SetStatus};
use crate::flows::devices::unreadable_query;
use crate::store::{DecisionRecord, DeviceRecord, DeviceStatus};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use vouch_proto::policy::{AuthorizeResponse, DecisionQuery};
use vouch_proto::ProblemCode;

pub use crate::flows::authorize::{facts_of, MAX_DECISION_PAGE};

/// Who asks for a decision: an operator (bearer token) or a device (mTLS).
#[derive(Debug)]
pub enum Caller {
    /// An operator; may ask about any request.
    Operator(Operator),
    /// A device; may ask only about requests where it is the principal or the resource.
    Device(DeviceRecord),
}

impl Caller {
    /// How the decision log names the caller.
    pub(crate) fn name(&self) -> String {
        match self {
            Self::Operator(o) => o.actor(),
            Self::Device(d) => format!("device:{}", d.id),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // An `Authorization` header means an operator, and only an operator: a bad token is
        // refused, not retried as a device.
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(Self::Operator(
                Operator::from_request_parts(parts, state).await?,
            ));
        }
        let device = DeviceCaller::from_request_parts(parts, state).await?;
        let (record, certificate_revoked) = state
            .registry
            .device_by_serial(&device.serial.to_hex())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ProblemCode::DeviceUnknown,
                    "client certificate was not issued to a registered device",
                )
            })?;
        device.check_record(&record.id)?;
        if record.status != DeviceStatus::Active {
            return Err(ApiError::new(
                ProblemCode::DeviceRevoked,
                "this device is revoked",
            ));
        }
        if certificate_revoked {
            return Err(certificate_revoked_problem());
        }
        Ok(Self::Device(record))
    }
}

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
pub struct ReloadResponse {
    /// What happened to the active set.
    pub active: ReloadOutcome,
    /// What happened to the shadow set.
    pub shadow: ReloadOutcome,
    /// Status after the reload.
    pub status: PolicyStatus,
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
    let (active, shadow) = crate::flows::reload::reload(&state, &operator.actor(), true).await?;
    let failed =
        matches!(active, ReloadOutcome::Failed(_)) || matches!(shadow, ReloadOutcome::Failed(_));
    let status = if failed {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(ReloadResponse {
            active,
            shadow,
            status: crate::flows::reload::status(&state),
        }),
    ))
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
