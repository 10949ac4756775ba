//! Policy sets: reloading them (from the API, SIGHUP and the watcher alike; each new set is
//! audited), their status, and the signed bundle agents verify.

use crate::api::policy::{PolicyStatus, ReloadResponse};
use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::authz::ReloadOutcome;
use vouch_proto::ProblemCode;

/// Re-reads the policy directories (and writes an audit record for each new set). Blocking
/// work runs on a blocking thread. Used by the API, SIGHUP and the watcher.
pub async fn reload(
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

/// Re-reads the policy directories now, for an operator: retries a set that failed before,
/// and answers with the outcome and the status after it.
pub(crate) async fn reload_now(state: &AppState, actor: &str) -> Result<ReloadResponse, ApiError> {
    let (active, shadow) = reload(state, actor, true).await?;
    Ok(ReloadResponse {
        active,
        shadow,
        status: status(state),
    })
}

/// The active set's version, load time and last load error; the same for the shadow set.
pub fn status(state: &AppState) -> PolicyStatus {
    let (active, shadow) = state.policy.status();
    PolicyStatus {
        active,
        shadow: shadow.dir.is_some().then_some(shadow),
    }
}

/// The active policy set as a signed bundle (compact JWS, see `authz::signed`) for agents
/// to verify against the trust bundle and cache.
pub fn bundle(state: &AppState) -> Result<String, ApiError> {
    let set = state.policy.active().ok_or_else(|| {
        ApiError::new(
            ProblemCode::NoPolicy,
            "no policy directory is configured (`--policy-dir`)",
        )
    })?;
    state
        .bundle_signing
        .signed(&state.ca, &state.trust_domain, &set, state.clock.now())
        .map_err(|e| ApiError::internal(&e))
}
