//! Policy decisions as devices and operators ask for them.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The answer to `POST /v1/authorize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthorizeResponse {
    /// `allow` or `deny`.
    pub decision: String,
    /// The policies that decided it (empty for a default deny).
    pub policies: Vec<String>,
    /// Errors met while evaluating policies (those policies were skipped).
    pub errors: Vec<String>,
    /// The active policy set's version: the Git commit id, or `sha256:<hash>`.
    pub policy_version: String,
    /// Annotations of the deciding policies (e.g. `rate_limit`), for the enforcer.
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<AnnotationView>,
}

/// One annotation of a deciding policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AnnotationView {
    /// The policy carrying it.
    pub policy: String,
    /// e.g. `rate_limit`.
    pub key: String,
    /// e.g. `1000/min`.
    pub value: String,
}

/// Query of `GET /v1/policy/decisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Only decisions about this device (as principal).
    #[param(min_length = 1, max_length = 128)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Only decisions the shadow set decided otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_differs: Option<bool>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<i64>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Most decisions in one upload (`POST /v1/policy/decisions`).
pub const MAX_UPLOADED_DECISIONS: usize = 500;

/// Which end of a message a sidecar decided at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSide {
    /// The sender's sidecar, before sealing (egress).
    Sender,
    /// The receiver's sidecar, before opening (ingress).
    Receiver,
}

impl DecisionSide {
    /// How the decision log names where the decision was made.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sender => "sender",
            Self::Receiver => "receiver",
        }
    }
}

/// One decision a sidecar made on a message (action `send`), as its spool keeps it and
/// uploads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDecision {
    /// The sidecar's own id of this decision (32 hex digits): a retried upload of it is
    /// recorded once.
    #[schema(min_length = 32, max_length = 32, pattern = "^[0-9a-f]{32}$")]
    pub id: String,
    /// When it was decided (Unix seconds, the device's clock).
    pub at: i64,
    /// Where it was decided.
    pub side: DecisionSide,
    /// The sending device (the principal).
    #[schema(min_length = 1, max_length = 64)]
    pub from: String,
    /// The receiving device (the resource).
    #[schema(min_length = 1, max_length = 64)]
    pub to: String,
    /// The request context (data type, protocol, tls, mtls, size).
    #[schema(value_type = Object)]
    pub context: vouch_policy::model::MessageContext,
    /// Allowed or not.
    pub allowed: bool,
    /// The policies that decided it (empty for a default deny).
    #[schema(max_items = 64)]
    pub policies: Vec<String>,
    /// The policy version that decided (empty: no verified bundle, every message refused).
    #[schema(max_length = 128)]
    pub policy_version: String,
}

/// `POST /v1/policy/decisions`: a batch of a sidecar's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionUpload {
    /// At most [`MAX_UPLOADED_DECISIONS`].
    #[schema(max_items = 500)]
    pub decisions: Vec<AgentDecision>,
}

/// The answer to an upload: how many were new and how many were already recorded (a
/// retried batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DecisionUploadOutcome {
    /// Newly recorded.
    pub recorded: u64,
    /// Already in the log from an earlier upload.
    pub already_recorded: u64,
}

impl From<&vouch_policy::engine::Annotation> for AnnotationView {
    fn from(a: &vouch_policy::engine::Annotation) -> Self {
        Self {
            policy: a.policy.clone(),
            key: a.key.clone(),
            value: a.value.clone(),
        }
    }
}
