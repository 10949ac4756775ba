//! The policy bundle's sequence, shared by every replica (see migration 0009).

use super::{Registry, StoreError};

impl Registry {
    /// The sequence number of the policy set with `content_hash` (version `version`),
    /// activated at `now`: the current number if that set is the last one activated, else
    /// the next number, recorded as this set's.
    pub(crate) async fn policy_sequence(
        &self,
        content_hash: &str,
        version: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        // Another replica may move the sequence between our update and our read (PostgreSQL,
        // read committed): then ask again; replicas that disagree about the active set are
        // a transient state of a rollout, and a few rounds settle it.
        for _ in 0..3 {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "UPDATE policy_sequence SET sequence = sequence + 1, content_hash = $1, \
                 version = $2, changed_at = $3 WHERE id = 1 AND content_hash <> $1",
            )
            .bind(content_hash)
            .bind(version)
            .bind(now)
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
