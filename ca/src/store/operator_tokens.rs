//! The deny-list of operator tokens revoked before they expire (migration 0010).

use super::{audit, Registry, StoreError};

impl Registry {
    /// Puts token id `jti` on the deny-list (with its audit record, in one transaction).
    /// Returns false if it was on it already.
    pub(crate) async fn revoke_operator_token(
        &self,
        jti: &str,
        now: i64,
        actor: &str,
        forget_after: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let added = sqlx::query(
            "INSERT INTO revoked_operator_tokens (jti, revoked_at, revoked_by, forget_after) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(now)
        .bind(actor)
        .bind(forget_after)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if added {
            audit::append(
                &mut tx,
                now,
                actor,
                "operator_token.revoked",
                jti,
                &serde_json::json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Whether token id `jti` is on the deny-list.
    pub(crate) async fn operator_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT revoked_at FROM revoked_operator_tokens WHERE jti = $1")
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }
}
