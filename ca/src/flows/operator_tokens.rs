//! Revoking operator tokens before they expire: a deny-list by token id in the registry,
//! checked on every operator request by every replica.

use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::tokens::MAX_OPERATOR_TOKEN_TTL_SECS;
use vouch_proto::enroll::{RevokeOperatorToken, RevokedOperatorToken};
use vouch_proto::ProblemCode;

/// Puts `req.token_id` on the deny-list, for `actor` (an admin).
pub async fn revoke(
    state: &AppState,
    actor: &str,
    req: RevokeOperatorToken,
) -> Result<RevokedOperatorToken, ApiError> {
    let id = &req.token_id;
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::new(
            ProblemCode::InvalidBody,
            "token_id is 32 lowercase hex digits",
        ));
    }
    let now = state.clock.unix();
    // Every token with this id has expired by then (tokens live at most the maximum, and
    // clocks may differ by the skew).
    let forget_after = now + MAX_OPERATOR_TOKEN_TTL_SECS + state.settings.clock_skew_secs;
    let newly_revoked = state
        .registry
        .revoke_operator_token(id, now, actor, forget_after)
        .await?;
    Ok(RevokedOperatorToken {
        token_id: req.token_id,
        newly_revoked,
    })
}

/// Refuses a token on the deny-list.
pub(crate) async fn check_not_revoked(state: &AppState, jti: &str) -> Result<(), ApiError> {
    if state.registry.operator_token_revoked(jti).await? {
        return Err(ApiError::new(
            ProblemCode::TokenRevoked,
            "operator token refused: it was revoked",
        ));
    }
    Ok(())
}
