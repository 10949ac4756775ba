//! Policy decisions: `authorize` builds each device's facts from the registry, decides with
//! the active policy set (and the shadow set beside it), and answers only once the decision
//! is in the decision log; `decisions` reads that log.

use crate::api::auth::Caller;
use crate::api::policy::DecisionPage;
use crate::api::problem::{bounded, ApiError};
use crate::api::AppState;
use crate::authz::DecisionRequest;
use crate::store::{
    AttestationState, DecisionFilter, DeviceRecord, DeviceStatus, NewDecision, ShadowOutcome,
};
use std::collections::BTreeMap;
use vouch_policy::model::{Attestation, DeviceFacts, Standing, Target};
use vouch_proto::policy::{AuthorizeResponse, DecisionQuery};
use vouch_proto::ProblemCode;

/// Largest page of the decision log.
pub const MAX_DECISION_PAGE: i64 = 1000;

/// What the policy model sees of a registered device.
pub fn facts_of(device: &DeviceRecord) -> DeviceFacts {
    let standing = Standing {
        revoked: device.status == DeviceStatus::Revoked,
        attestation: match device.attestation {
            AttestationState::None => Attestation::None,
            AttestationState::Active => Attestation::Passed,
            AttestationState::Quarantined => Attestation::Quarantined,
            AttestationState::Stale => Attestation::Stale,
        },
        tpm_bound: device.ek_sha256.is_some(),
    };
    DeviceFacts {
        zone: device.zone.clone(),
        trust: standing.trust().into(),
        device_class: device.device_class.clone().unwrap_or_default(),
        capabilities: Vec::new(),
        status: standing.status().into(),
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
/// the registry, and logs the decision before answering it. A device may ask only about
/// requests where it is the principal or the resource.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    req: DecisionRequest,
) -> Result<AuthorizeResponse, ApiError> {
    let now_ms = i64::try_from(state.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    if let Err(wait) = state.decision_rate.take(&caller.name(), now_ms) {
        state.metrics.decision(ProblemCode::RateLimited.as_str());
        return Err(ApiError::new(
            ProblemCode::RateLimited,
            format!(
                "more than {} decisions a second from this caller; try again in {wait} s",
                state.settings.decisions_per_second
            ),
        )
        .retry_after(wait));
    }
    if let Caller::Device(me) = caller {
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
        device_facts(state, &req.principal).await?,
    );
    match &req.resource {
        Target::Device(id) if !devices.contains_key(id) => {
            devices.insert(id.clone(), device_facts(state, id).await?);
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
        origin: "server",
        upload_id: None,
    };
    // INVARIANT: a decision is answered only once it is in the decision log.
    state.registry.log_decision(record).await.map_err(|e| {
        tracing::error!(error = %e, "decision not logged; refusing to answer it");
        ApiError::new(
            ProblemCode::DecisionLogUnavailable,
            "the decision log cannot record decisions; try again",
        )
    })?;
    state.metrics.decision(decision_word(decision.allowed));
    Ok(AuthorizeResponse {
        decision: decision_word(decision.allowed).into(),
        policies: decision.policies.clone(),
        errors: decision.errors.clone(),
        policy_version: outcome.version,
        annotations: decision.annotations.iter().map(Into::into).collect(),
    })
}

/// A page of the decision log, newest first.
pub async fn decisions(state: &AppState, q: DecisionQuery) -> Result<DecisionPage, ApiError> {
    let bad = |d: String| ApiError::new(ProblemCode::InvalidQuery, d);
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
    let mut has_more = page.len() as i64 > limit;
    page.truncate(usize::try_from(limit).unwrap_or(0));
    // The page ends early rather than grow past its byte bound (at least one record).
    let mut bytes = 0usize;
    let fits = page
        .iter()
        .take_while(|d| {
            bytes += serde_json::to_vec(d).map_or(0, |v| v.len());
            bytes <= state.settings.max_decision_page_bytes
        })
        .count()
        .max(1);
    if fits < page.len() {
        page.truncate(fits);
        has_more = true;
    }
    let next_cursor = if has_more {
        page.last().map(|d| d.id)
    } else {
        None
    };
    Ok(DecisionPage {
        decisions: page,
        next_cursor,
    })
}
