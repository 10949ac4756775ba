//! The policy decision log: one append-only row per decision the server answers, written in
//! batches by the decision writer (`group_commit`) before the decision is answered, so the
//! log cannot miss a decision that a caller acted on. The schema refuses updates and deletes.
//! When the queue is full, callers wait (back-pressure) instead of entries being dropped,
//! which is how OPA's asynchronous decision logs lose events under load; a decision that
//! cannot be logged is not given.

use super::batch::{Param, Params};
use super::group_commit::{self, Batch};
use super::{col, Registry, StoreError};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

/// Decisions, group-committed.
pub(super) struct Decisions;

impl Batch for Decisions {
    type Job = NewDecision;
    type Outcome = ();
    const NAME: &'static str = "decision writer";
    const MAX_BATCH: usize = 512;

    async fn commit(
        registry: &Registry,
        conn: &mut AnyConnection,
        jobs: &[NewDecision],
    ) -> Result<Vec<()>, StoreError> {
        registry.append_decisions(conn, jobs).await?;
        Ok(vec![(); jobs.len()])
    }
}

/// What the candidate (shadow) policy set decided beside the active one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ShadowOutcome {
    /// `allow` or `deny`.
    pub decision: String,
    /// The candidate policies that decided it.
    pub policies: Vec<String>,
    /// The candidate set's version.
    pub policy_version: String,
}

/// A decision to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDecision {
    /// When (Unix seconds).
    pub at: i64,
    /// Who asked: `operator:<sub>` or `device:<id>`.
    pub caller: String,
    /// The principal (a Cedar entity uid, e.g. `Device::"..."`).
    pub principal: String,
    /// The action name.
    pub action: String,
    /// The resource (a Cedar entity uid).
    pub resource: String,
    /// The request context, JSON text.
    pub context: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The policies that decided it.
    pub policies: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// The active policy set's version.
    pub policy_version: String,
    /// The candidate set's outcome, in shadow mode.
    pub shadow: Option<ShadowOutcome>,
    /// Where it was made: `server`, or a message's `sender` or `receiver` sidecar.
    pub origin: &'static str,
    /// For a sidecar's decision, `<device id>/<its decision id>`: recorded once however
    /// often it is uploaded.
    pub upload_id: Option<String>,
}

/// A logged decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    /// Sequence number (increasing).
    pub id: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// Who asked.
    pub caller: String,
    /// The principal.
    pub principal: String,
    /// The action.
    pub action: String,
    /// The resource.
    pub resource: String,
    /// The request context (JSON).
    #[schema(value_type = Object)]
    pub context: serde_json::Value,
    /// `allow` or `deny`.
    pub decision: String,
    /// The policies that decided it.
    pub policies: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// The active policy set's version.
    pub policy_version: String,
    /// The candidate set's outcome, in shadow mode.
    pub shadow: Option<ShadowOutcome>,
    /// Where it was made: `server` (`/v1/authorize`), or the `sender` or `receiver` sidecar
    /// of a message (the caller names which device).
    pub origin: String,
}

/// Which decisions to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    /// Only this principal (entity uid).
    pub principal: Option<String>,
    /// Only decisions where the shadow set decided otherwise.
    pub shadow_differs: bool,
    /// Only ids below this one (the cursor of the previous page).
    pub before: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// Columns of one row, in insert order.
const COLUMNS: &str = "at, caller, principal, action, resource, context, decision, policies, \
    errors, policy_version, shadow_decision, shadow_policies, shadow_version, origin, upload_id";

fn json_list(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

fn decode_list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn record_from_row(row: &AnyRow) -> Result<DecisionRecord, StoreError> {
    let context: String = col(row, "context")?;
    let policies: String = col(row, "policies")?;
    let errors: String = col(row, "errors")?;
    let shadow_decision: Option<String> = col(row, "shadow_decision")?;
    let shadow_policies: Option<String> = col(row, "shadow_policies")?;
    let shadow_version: Option<String> = col(row, "shadow_version")?;
    let shadow = match (shadow_decision, shadow_policies, shadow_version) {
        (Some(decision), Some(policies), Some(policy_version)) => Some(ShadowOutcome {
            decision,
            policies: decode_list(&policies)?,
            policy_version,
        }),
        _ => None,
    };
    Ok(DecisionRecord {
        id: col(row, "id")?,
        at: col(row, "at")?,
        caller: col(row, "caller")?,
        principal: col(row, "principal")?,
        action: col(row, "action")?,
        resource: col(row, "resource")?,
        context: serde_json::from_str(&context).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        decision: col(row, "decision")?,
        policies: decode_list(&policies)?,
        errors: decode_list(&errors)?,
        policy_version: col(row, "policy_version")?,
        shadow,
        origin: col(row, "origin")?,
    })
}

impl Registry {
    /// Commits `decision` to the decision log (through the decision writer); returns once it
    /// is durable in the database.
    pub(crate) async fn log_decision(&self, decision: NewDecision) -> Result<(), StoreError> {
        match &self.writers {
            Some(writers) => writers.decisions.submit(decision).await,
            None => group_commit::commit_alone::<Decisions>(self, decision).await,
        }
    }

    /// Appends the decisions a sidecar uploaded, in one transaction; one whose `upload_id`
    /// is already in the log is skipped. Returns how many were new.
    pub(crate) async fn record_uploaded_decisions(
        &self,
        decisions: &[NewDecision],
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.append_decisions(&mut conn, decisions).await
    }

    /// Appends `decisions` in one transaction (one multi-row statement per chunk): all or
    /// none are written. A decision whose `upload_id` is already logged is skipped; returns
    /// how many rows were written.
    async fn append_decisions(
        &self,
        conn: &mut AnyConnection,
        decisions: &[NewDecision],
    ) -> Result<u64, StoreError> {
        if decisions.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        let mut tx = self.begin_write_on(conn).await?;
        // 15 parameters a row; 200 rows stay far below both backends' parameter limits.
        for chunk in decisions.chunks(200) {
            let mut p = Params::new(self.backend);
            let rows: Vec<String> = chunk
                .iter()
                .map(|d| {
                    let shadow = d.shadow.as_ref();
                    p.row([
                        Param::Int(d.at),
                        Param::Text(d.caller.clone()),
                        Param::Text(d.principal.clone()),
                        Param::Text(d.action.clone()),
                        Param::Text(d.resource.clone()),
                        Param::Text(d.context.clone()),
                        Param::Text(d.decision.clone()),
                        Param::Text(json_list(&d.policies)),
                        Param::Text(json_list(&d.errors)),
                        Param::Text(d.policy_version.clone()),
                        Param::OptText(shadow.map(|s| s.decision.clone())),
                        Param::OptText(shadow.map(|s| json_list(&s.policies))),
                        Param::OptText(shadow.map(|s| s.policy_version.clone())),
                        Param::Text(d.origin.to_owned()),
                        Param::OptText(d.upload_id.clone()),
                    ])
                })
                .collect();
            let sql = format!(
                "INSERT INTO decision_log ({COLUMNS}) VALUES {} ON CONFLICT (upload_id) DO NOTHING",
                rows.join(", ")
            );
            written += p
                .bind(sqlx::query(&sql))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Logged decisions matching `filter`, newest first.
    pub async fn decisions(
        &self,
        filter: &DecisionFilter,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        let mut p = Params::new(self.backend);
        let mut clauses = Vec::new();
        if let Some(principal) = &filter.principal {
            clauses.push(format!(
                "principal = {}",
                p.add(Param::Text(principal.clone()))
            ));
        }
        if filter.shadow_differs {
            clauses.push("shadow_decision IS NOT NULL AND shadow_decision <> decision".into());
        }
        if let Some(before) = filter.before {
            clauses.push(format!("id < {}", p.add(Param::Int(before))));
        }
        let predicate = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let limit = p.add(Param::Int(filter.limit));
        let sql = format!(
            "SELECT id, {COLUMNS} FROM decision_log {predicate} ORDER BY id DESC LIMIT {limit}"
        );
        let rows = p.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Number of logged decisions.
    pub async fn decision_count(&self) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM decision_log")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }
}
