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
    if matches!(active, ReloadOutcome::Loaded { .. }) {
        number_active_set(state).await?;
    }
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
pub async fn bundle(state: &AppState) -> Result<String, ApiError> {
    match bundle_after(state, None).await? {
        BundleAnswer::Current { jws, .. } => Ok(jws),
        BundleAnswer::NotModified(_) => Err(ApiError::internal(&"no bundle")),
    }
}

/// The signed bundle, or that the caller's version is still the active one.
#[derive(Debug)]
pub enum BundleAnswer {
    /// The active set's bundle and version.
    Current {
        /// The compact JWS.
        jws: String,
        /// The active set's version.
        version: String,
    },
    /// The caller's version is the active one.
    NotModified(String),
}

async fn bundle_after(state: &AppState, known: Option<&str>) -> Result<BundleAnswer, ApiError> {
    let set = state.policy.active().ok_or_else(|| {
        ApiError::new(
            ProblemCode::NoPolicy,
            "no policy directory is configured (`--policy-dir`)",
        )
    })?;
    if known == Some(set.version.id.as_str()) {
        return Ok(BundleAnswer::NotModified(set.version.id.clone()));
    }
    let sequence = sequence_of(state, &set).await?;
    let jws = state
        .bundle_signing
        .signed(
            &state.ca,
            &state.trust_domain,
            &set,
            sequence,
            state.clock.now(),
        )
        .map_err(|e| ApiError::internal(&e))?;
    Ok(BundleAnswer::Current {
        jws,
        version: set.version.id.clone(),
    })
}

/// The bundle sequence number of `set` (asked of the registry once per set).
async fn sequence_of(state: &AppState, set: &crate::authz::ActiveSet) -> Result<i64, ApiError> {
    let hash = &set.version.content_hash;
    if let Some(sequence) = state.bundle_signing.sequence_of(hash) {
        return Ok(sequence);
    }
    let now = state.clock.unix();
    let sequence = state
        .registry
        .policy_sequence(hash, &set.version.id, now)
        .await?;
    state.bundle_signing.remember_sequence(hash, sequence);
    Ok(sequence)
}

/// Numbers the active set in the registry's policy sequence, if there is one: called when a
/// set becomes active, so the replica that activated a set last sets the fleet's newest.
pub(crate) async fn number_active_set(state: &AppState) -> Result<(), ApiError> {
    if let Some(set) = state.policy.active() {
        sequence_of(state, &set).await?;
    }
    Ok(())
}

/// The signed bundle if the active version is not `known`; otherwise waits up to `wait`
/// for another set to be swapped in (a long-poll), and says `NotModified` if none was.
pub async fn bundle_changed(
    state: &AppState,
    known: Option<&str>,
    wait: std::time::Duration,
) -> Result<BundleAnswer, ApiError> {
    let mut changes = state.policy.active_changes();
    changes.borrow_and_update();
    let answer = bundle_after(state, known).await?;
    if matches!(answer, BundleAnswer::Current { .. }) || wait.is_zero() {
        return Ok(answer);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            // The wait is over, or the policy service is gone.
            Err(_) | Ok(Err(_)) => return Ok(answer),
        }
        let now = bundle_after(state, known).await?;
        if matches!(now, BundleAnswer::Current { .. }) {
            return Ok(now);
        }
    }
}
