//! The policy bundle's sequence, shared by every replica (see migration 0009).

use super::{Registry, StoreError};

impl Registry {
    /// The sequence number of the policy set with `content_hash` (version `version`),
    /// activated at `now` (Unix seconds): the current number if that set is the last one
    /// activated, else the next number (one more, and at least `now` in milliseconds),
    /// recorded as this set's.
    pub(crate) async fn policy_sequence(
        &self,
        content_hash: &str,
        version: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        // Another replica may move the sequence between our update and our read (PostgreSQL,
        // read committed): then ask again; replicas that disagree about the active set are
        // a transient state of a rollout, and a few rounds settle it.
        // The next number is also at least the time in milliseconds: a registry restored
        // from an old backup (its sequence behind what agents hold) still numbers the next
        // activation above every number handed out before.
        let next = match self.backend {
            super::Backend::Sqlite => "MAX(sequence + 1, $4)",
            super::Backend::Postgres => "GREATEST(sequence + 1, $4)",
        };
        let update = format!(
            "UPDATE policy_sequence SET sequence = {next}, content_hash = $1, version = $2, \
             changed_at = $3 WHERE id = 1 AND content_hash <> $1"
        );
        for _ in 0..3 {
            let mut tx = self.begin_write().await?;
            sqlx::query(&update)
                .bind(content_hash)
                .bind(version)
                .bind(now)
                .bind(now.saturating_mul(1000))
                .execute(&mut *tx)
                .await?;
            let (sequence, current): (i64, String) =
                sqlx::query_as("SELECT sequence, content_hash FROM policy_sequence WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            if current == content_hash {
                return Ok(sequence);
            }
        }
        Err(StoreError::Contended(
            "replicas keep activating different policy sets",
        ))
    }
}
