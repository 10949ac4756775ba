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

impl From<&vouch_policy::engine::Annotation> for AnnotationView {
    fn from(a: &vouch_policy::engine::Annotation) -> Self {
        Self {
            policy: a.policy.clone(),
            key: a.key.clone(),
            value: a.value.clone(),
        }
    }
}
