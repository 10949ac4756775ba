//! Policy endpoints: decisions (`/v1/authorize`), the decision log, status and reload of the
//! policy sets, and the signed bundle for agents.

use super::auth::{certificate_revoked_problem, DeviceCaller, Operator};
use super::problem::{bounded, ApiError, ApiJson};
use super::AppState;
use crate::authz::{DecisionRequest, ReloadOutcome, SetStatus};
use crate::store::{
    AttestationState, DecisionFilter, DecisionRecord, DeviceRecord, DeviceStatus, NewDecision,
    ShadowOutcome,
};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use std::collections::BTreeMap;
use vouch_policy::model::{DeviceFacts, Target};
use vouch_proto::policy::{AuthorizeResponse, DecisionQuery};
use vouch_proto::ProblemCode;

/// Largest page of the decision log.
pub const MAX_DECISION_PAGE: i64 = 1000;

/// Who asks for a decision: an operator (bearer token) or a device (mTLS).
#[derive(Debug)]
pub enum Caller {
    /// An operator; may ask about any request.
    Operator(Operator),
    /// A device; may ask only about requests where it is the principal or the resource.
    Device(DeviceRecord),
}

impl Caller {
    fn name(&self) -> String {
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

/// What the policy model sees of a registered device.
pub fn facts_of(device: &DeviceRecord) -> DeviceFacts {
    // Revocation wins; then the attestation finding. A TPM device that has not yet passed an
    // attestation is `unattested`: its trust rests on an attestation it has not given. A
    // device without a TPM never attests and is `active`. Trust: `high` for a device whose
    // keys are bound to a TPM at enrollment, `low` for one enrolled without.
    let status = match (device.status, device.attestation) {
        (DeviceStatus::Revoked, _) => "revoked",
        (_, AttestationState::Quarantined) => "quarantined",
        (_, AttestationState::Stale) => "stale",
        (_, AttestationState::None) if device.ek_sha256.is_some() => "unattested",
        _ => "active",
    };
    DeviceFacts {
        zone: device.zone.clone(),
        trust: if device.ek_sha256.is_some() {
            "high"
        } else {
            "low"
        }
        .into(),
        device_class: device.device_class.clone().unwrap_or_default(),
        capabilities: Vec::new(),
        status: status.into(),
        last_attested: device.last_attested.unwrap_or(0),
        labels: device.labels.clone(),
    }
}

fn decision_word(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

fn entity(ty: &str, id: &str) -> String {
    format!("{ty}::{}", serde_json::Value::String(id.to_owned()))
}

async fn device_facts(state: &AppState, id: &str) -> Result<DeviceFacts, ApiError> {
    if id.is_empty() || id.chars().count() > 64 {
        return Err(ApiError::new(
            ProblemCode::InvalidRequest,
            "a device id has 1 to 64 characters",
        ));
    }
    let device = state.registry.device(id).await?.ok_or_else(|| {
        ApiError::new(
            ProblemCode::DeviceNotFound,
            format!("no device `{}`", bounded(id, 64)),
        )
    })?;
    Ok(facts_of(&device))
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
    if let Caller::Device(me) = &caller {
        let about_me =
            req.principal == me.id || matches!(&req.resource, Target::Device(d) if *d == me.id);
        if !about_me {
            return Err(ApiError::new(
                ProblemCode::ForbiddenRequest,
                "a device may ask only about requests where it is the principal or the resource",
            ));
        }
    }
    // Every string of a decision goes into the append-only decision log: bounded here (the
    // document states the same bounds).
    let context = &req.context;
    if context.data_type.is_empty()
        || context.data_type.chars().count() > 128
        || context.protocol.chars().count() > 64
    {
        return Err(ApiError::new(
            ProblemCode::InvalidRequest,
            "a data type has 1 to 128 characters and a protocol at most 64",
        ));
    }
    if req.action.is_empty() || req.action.chars().count() > 128 {
        return Err(ApiError::new(
            ProblemCode::InvalidRequest,
            "an action name has 1 to 128 characters",
        ));
    }
    let mut devices = BTreeMap::new();
    devices.insert(
        req.principal.clone(),
        device_facts(&state, &req.principal).await?,
    );
    match &req.resource {
        Target::Device(id) if !devices.contains_key(id) => {
            devices.insert(id.clone(), device_facts(&state, id).await?);
        }
        Target::Zone(z) if z.is_empty() || z.chars().count() > 64 => {
            return Err(ApiError::new(
                ProblemCode::InvalidRequest,
                "a zone name has 1 to 64 characters",
            ))
        }
        _ => {}
    }
    let outcome = state
        .policy
        .decide(&req, &devices)
        .map_err(|e| ApiError::new(ProblemCode::InvalidRequest, bounded(&e.to_string(), 300)))?;

    let decision = &outcome.decision;
    let shadow = outcome.shadow.as_ref().map(|(d, version)| ShadowOutcome {
        decision: decision_word(d.allowed).into(),
        policies: d.policies.clone(),
        policy_version: version.clone(),
    });
    if let Some(s) = &shadow {
        if s.decision != decision_word(decision.allowed) {
            state.metrics.shadow_difference();
            tracing::warn!(
                principal = %req.principal,
                action = %req.action,
                active = decision_word(decision.allowed),
                active_version = %outcome.version,
                shadow = %s.decision,
                shadow_version = %s.policy_version,
                "shadow policy set decides differently"
            );
        }
    }
    let resource = match &req.resource {
        Target::Device(d) => entity("Device", d),
        Target::Zone(z) => entity("Zone", z),
    };
    let record = NewDecision {
        at: state.clock.unix(),
        caller: caller.name(),
        principal: entity("Device", &req.principal),
        action: req.action.clone(),
        resource,
        context: serde_json::to_string(&req.context).map_err(|e| ApiError::internal(&e))?,
        decision: decision_word(decision.allowed).into(),
        policies: decision.policies.clone(),
        errors: decision.errors.clone(),
        policy_version: outcome.version.clone(),
        shadow,
    };
    // INVARIANT: a decision is answered only once it is in the decision log.
    state.decision_log.record(record).await.map_err(|e| {
        tracing::error!(error = %e, "decision not logged; refusing to answer it");
        ApiError::new(
            ProblemCode::DecisionLogUnavailable,
            "the decision log cannot record decisions; try again",
        )
    })?;
    state.metrics.decision(decision_word(decision.allowed));
    Ok(Json(AuthorizeResponse {
        decision: decision_word(decision.allowed).into(),
        policies: decision.policies.clone(),
        errors: decision.errors.clone(),
        policy_version: outcome.version,
        annotations: decision.annotations.iter().map(Into::into).collect(),
    }))
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
    let bad = |d: String| ApiError::new(ProblemCode::InvalidQuery, d);
    let Query(q) = query.map_err(|e| bad(bounded(&e.body_text(), 300)))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_DECISION_PAGE).contains(&limit) {
        return Err(bad(format!("limit must be 1 to {MAX_DECISION_PAGE}")));
    }
    if let Some(p) = &q.principal {
        if p.is_empty() || p.chars().count() > 128 {
            return Err(bad("principal has 1 to 128 characters".into()));
        }
    }
    let mut page = state
        .registry
        .decisions(&DecisionFilter {
            principal: q.principal.map(|p| entity("Device", &p)),
            shadow_differs: q.shadow_differs.unwrap_or(false),
            before: q.cursor,
            limit: limit + 1,
        })
        .await?;
    let has_more = page.len() as i64 > limit;
    page.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = if has_more {
        page.last().map(|d| d.id)
    } else {
        None
    };
    Ok(Json(DecisionPage {
        decisions: page,
        next_cursor,
    }))
}

/// `GET /v1/policy/status`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyStatus {
    /// The enforced set.
    pub active: SetStatus,
    /// The candidate set evaluated in shadow mode, if configured.
    pub shadow: Option<SetStatus>,
}

fn policy_status(state: &AppState) -> PolicyStatus {
    let (active, shadow) = state.policy.status();
    PolicyStatus {
        active,
        shadow: shadow.dir.is_some().then_some(shadow),
    }
}

/// The active policy set's version, load time and last load error; the same for the shadow
/// set.
#[utoipa::path(get, path = "/v1/policy/status", security(("operator_jwt" = [])),
    responses((status = 200, body = PolicyStatus), (status = "4XX", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn status(State(state): State<AppState>, _operator: Operator) -> Json<PolicyStatus> {
    Json(policy_status(&state))
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

/// Re-reads the policy directories (and writes an audit record for each new set). Blocking
/// work runs on a blocking thread. Used by the API, SIGHUP and the watcher.
pub async fn reload_policies(
    state: &AppState,
    actor: &str,
    retry_failed: bool,
) -> Result<(ReloadOutcome, ReloadOutcome), ApiError> {
    let now = state.clock.unix();
    let service = state.clone();
    let (active, shadow) =
        tokio::task::spawn_blocking(move || service.policy.reload(now, retry_failed))
            .await
            .map_err(|e| ApiError::internal(&e))?;
    for (which, outcome) in [("active", &active), ("shadow", &shadow)] {
        match outcome {
            ReloadOutcome::Loaded { previous, version } => {
                tracing::info!(set = which, %previous, %version, actor, "policy set loaded");
                state
                    .registry
                    .audit(
                        now,
                        actor,
                        "policy.loaded",
                        version,
                        &serde_json::json!({"set": which, "previous": previous}),
                    )
                    .await?;
            }
            ReloadOutcome::Failed(f) if retry_failed || f.at == now => {
                tracing::warn!(set = which, problems = ?f.problems, actor, "policy set does not load; previous set stays active");
            }
            _ => {}
        }
    }
    Ok((active, shadow))
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
    let (active, shadow) = reload_policies(&state, &operator.actor(), true).await?;
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
            status: policy_status(&state),
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
    let set = state.policy.active().ok_or_else(|| {
        ApiError::new(
            ProblemCode::NoPolicy,
            "no policy directory is configured (`--policy-dir`)",
        )
    })?;
    let jws = state
        .bundle_signing
        .signed(&state.ca, &state.trust_domain, &set, state.clock.now())
        .map_err(|e| ApiError::internal(&e))?;
    Ok((
        [(header::CONTENT_TYPE, crate::authz::signed::CONTENT_TYPE)],
        jws,
    ))
}
