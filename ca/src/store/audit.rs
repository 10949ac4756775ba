//! The append-only audit log. Records are written inside the transaction of the change they
//! describe (see the callers); the schema refuses updates and deletes.

use super::{col, Registry, StoreError};
use sqlx::AnyConnection;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Sequence number.
    pub id: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// Who: `operator:<sub>`, `device:<id>` or `bootstrap-token:<jti>`.
    pub actor: String,
    /// What: `token.created`, `device.enrolled`, `certificate.renewed`, `device.revoked`.
    pub action: String,
    /// The object acted on (a device id or token id).
    pub subject: String,
    /// Details as JSON text.
    pub detail: String,
}

pub(super) async fn append(
    conn: &mut AnyConnection,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

impl Registry {
    /// The newest `limit` audit records, newest first.
    pub async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, subject, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: col(r, "id")?,
                    at: col(r, "at")?,
                    actor: col(r, "actor")?,
                    action: col(r, "action")?,
                    subject: col(r, "subject")?,
                    detail: col(r, "detail")?,
                })
            })
            .collect()
    }
}
