//! Decisions. Nothing is allowed unless a policy permits it, and a `forbid` always wins
//! (Cedar's semantics); every decision names the policies that decided it, the errors met,
//! and the annotations of the deciding policies (e.g. `@rate_limit("1000/min")`) for the
//! enforcer to apply.

use crate::index::{IndexError, ScopeIndex};
use cedar_policy::{Authorizer, Decision as CedarDecision, Entities, PolicySet, Request, Response};
use serde::Serialize;

/// One annotation of a deciding policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Annotation {
    /// The policy carrying it.
    pub policy: String,
    /// Annotation key, e.g. `rate_limit`.
    pub key: String,
    /// Its value, e.g. `1000/min`.
    pub value: String,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The policies that decided it (the forbids that denied it, or the permits that allowed
    /// it; empty for a default deny), sorted.
    pub policies: Vec<String>,
    /// Errors met while evaluating policies (such policies are skipped, as Cedar does).
    pub errors: Vec<String>,
    /// Annotations of the deciding policies, except `id`.
    pub annotations: Vec<Annotation>,
}

/// A loaded policy set, ready to decide.
#[derive(Debug)]
pub struct Engine {
    full: PolicySet,
    index: ScopeIndex,
    authorizer: Authorizer,
}

impl Engine {
    /// Indexes `set`.
    pub fn new(set: PolicySet) -> Result<Self, IndexError> {
        let index = ScopeIndex::new(&set)?;
        Ok(Self {
            full: set,
            index,
            authorizer: Authorizer::new(),
        })
    }

    /// The policy set.
    pub fn policy_set(&self) -> &PolicySet {
        &self.full
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the set is empty (every request is denied).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Decides `request` by evaluating only the policies whose scope matches it.
    pub fn decide(&self, request: &Request, entities: &Entities) -> Decision {
        let response = match (request.principal(), request.action(), request.resource()) {
            (Some(p), Some(a), Some(r)) => {
                let subset = self.index.matching_set(p, a, r, entities);
                self.authorizer.is_authorized(request, &subset, entities)
            }
            // Requests with unknowns are not built by Vouch; decide them the slow, sure way.
            _ => self.authorizer.is_authorized(request, &self.full, entities),
        };
        self.decision(&response)
    }

    /// Decides `request` by evaluating every policy (Cedar's own way): the reference the
    /// index is tested and benchmarked against.
    pub fn decide_full(&self, request: &Request, entities: &Entities) -> Decision {
        let response = self.authorizer.is_authorized(request, &self.full, entities);
        self.decision(&response)
    }

    fn decision(&self, response: &Response) -> Decision {
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        policies.sort();
        let mut errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        errors.sort();
        let mut annotations = Vec::new();
        for id in response.diagnostics().reason() {
            if let Some(policy) = self.full.policy(id) {
                for (key, value) in policy.annotations() {
                    if key != "id" {
                        annotations.push(Annotation {
                            policy: id.to_string(),
                            key: key.to_owned(),
                            value: value.to_owned(),
                        });
                    }
                }
            }
        }
        annotations.sort_by(|a, b| (&a.policy, &a.key).cmp(&(&b.policy, &b.key)));
        Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies,
            errors,
            annotations,
        }
    }
}
