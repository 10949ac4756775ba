//! Decisions made by sidecars: a device uploads what its sidecar decided about messages
//! (from its crash-safe spool, in batches, retried until answered), and the server appends
//! them to the decision log with where they were made. An upload is idempotent: each
//! decision carries the sidecar's own id, and one already logged is skipped, so a batch
//! retried after a lost answer (or after the agent was killed mid-upload) is recorded once.
//!
//! A device reports only decisions it took part in: as the sender it is the principal, as
//! the receiver it is the resource. Each upload is checked whole before any row is written.
//! Each device may upload `--decision-rate` batches a second (its own allowance, beside the
//! one for `/v1/authorize`), so a device cannot fill the append-only log faster than that.
//! A decision's time is the device's clock: one more than a day ahead is refused (a day,
//! not the clock skew, so that a device whose clock runs fast still hands its decisions
//! over instead of filling its spool).

use crate::api::auth::Caller;
use crate::api::problem::{bounded, ApiError};
use crate::api::AppState;
use crate::store::NewDecision;
use vouch_proto::ids::DeviceId;
use vouch_proto::policy::{
    AgentDecision, DecisionSide, DecisionUpload, DecisionUploadOutcome, MAX_UPLOADED_DECISIONS,
};
use vouch_proto::ProblemCode;

/// Largest body of an upload, bytes (500 decisions of about 1 KiB each, with room).
pub const MAX_UPLOAD_BODY_BYTES: usize = 1024 * 1024;

/// How far ahead of the server's clock a decision's time may be, seconds.
pub const MAX_AHEAD_SECS: i64 = 86_400;

/// Most deciding policies one uploaded decision may name, and the longest name.
const MAX_POLICIES: usize = 64;
const MAX_NAME_CHARS: usize = 256;

fn invalid(detail: String) -> ApiError {
    ApiError::new(ProblemCode::InvalidRequest, detail)
}

fn entity(id: &str) -> String {
    format!("Device::{}", serde_json::Value::String(id.to_owned()))
}

/// Checks one uploaded decision of `me` at `now` and turns it into a log row.
fn row(me: &str, d: &AgentDecision, now: i64) -> Result<NewDecision, ApiError> {
    let what = |detail: &str| invalid(format!("decision `{}`: {detail}", bounded(&d.id, 32)));
    if d.id.len() != 32 || !d.id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(what("the id is not 32 lowercase hex digits"));
    }
    if d.at < 0 || d.at > now + MAX_AHEAD_SECS {
        return Err(what("its time is more than a day ahead or before 1970"));
    }
    for device in [&d.from, &d.to] {
        if DeviceId::parse(device).is_none() {
            return Err(what("names no device id"));
        }
    }
    let party = match d.side {
        DecisionSide::Sender => &d.from,
        DecisionSide::Receiver => &d.to,
    };
    if party != me {
        return Err(ApiError::new(
            ProblemCode::ForbiddenRequest,
            format!(
                "decision `{}`: a device uploads only decisions made at its own end ({} is not this device)",
                d.id,
                d.side.as_str()
            ),
        ));
    }
    let context = &d.context;
    if d.policies.len() > MAX_POLICIES
        || d.policies
            .iter()
            .any(|p| p.chars().count() > MAX_NAME_CHARS)
        || d.policy_version.chars().count() > 128
        || context.data_type.chars().count() > MAX_NAME_CHARS
        || context.protocol.chars().count() > 64
    {
        return Err(what("a name or list is longer than allowed"));
    }
    let decision = if d.allowed { "allow" } else { "deny" };
    Ok(NewDecision {
        at: d.at,
        caller: format!("device:{me}"),
        principal: entity(&d.from),
        action: "send".into(),
        resource: entity(&d.to),
        context: serde_json::to_string(context).map_err(|e| ApiError::internal(&e))?,
        decision: decision.into(),
        policies: d.policies.clone(),
        errors: Vec::new(),
        policy_version: d.policy_version.clone(),
        shadow: None,
        origin: d.side.as_str(),
        upload_id: Some(format!("{me}/{}", d.id)),
    })
}

/// Appends a device's uploaded decisions to the decision log, each once.
pub async fn record(
    state: &AppState,
    caller: &Caller,
    upload: DecisionUpload,
) -> Result<DecisionUploadOutcome, ApiError> {
    let Caller::Device(me) = caller else {
        return Err(ApiError::new(
            ProblemCode::ClientCertificateRequired,
            "decisions are uploaded by the device that made them, over mutual TLS",
        ));
    };
    if upload.decisions.is_empty() || upload.decisions.len() > MAX_UPLOADED_DECISIONS {
        return Err(invalid(format!(
            "an upload has 1 to {MAX_UPLOADED_DECISIONS} decisions"
        )));
    }
    let now_ms = i64::try_from(state.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    if let Err(wait) = state
        .decision_rate
        .take(&format!("upload:device:{}", me.id), now_ms)
    {
        return Err(ApiError::new(
            ProblemCode::RateLimited,
            format!(
                "more than {} uploads a second from this device; try again in {wait} s",
                state.settings.decisions_per_second
            ),
        )
        .retry_after(wait));
    }
    let now = state.clock.unix();
    let rows = upload
        .decisions
        .iter()
        .map(|d| row(&me.id, d, now))
        .collect::<Result<Vec<_>, _>>()?;
    let recorded = state
        .registry
        .record_uploaded_decisions(&rows)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "uploaded decisions not logged");
            ApiError::new(
                ProblemCode::DecisionLogUnavailable,
                "the decision log cannot record decisions; upload them again",
            )
        })?;
    let total = rows.len() as u64;
    tracing::info!(device = %me.id, recorded, already = total - recorded, "decisions uploaded by a sidecar");
    Ok(DecisionUploadOutcome {
        recorded,
        already_recorded: total - recorded,
    })
}
