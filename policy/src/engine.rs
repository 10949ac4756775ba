//! Decisions. Nothing is allowed unless a policy permits it, and a `forbid` always wins
//! (Cedar's semantics); every decision names the policies that decided it, the errors met,
//! and the annotations of the deciding policies (e.g. `@rate_limit("1000/min")`) for the
//! enforcer to apply.
//!
//! How a decision is made, fast and the same as Cedar's:
//! 1. the scope index finds the policies whose scope matches (`index`);
//! 2. their conditions (`when`/`unless` clauses) are evaluated by Cedar's own evaluator
//!    (`cedar_policy::eval_expression`), each distinct condition once per request: a large
//!    fleet's policies repeat a handful of conditions (`context.tls`, a size limit...);
//! 3. Cedar's rule combines them: any satisfied `forbid` denies and names the satisfied
//!    forbids; else any satisfied `permit` allows and names the satisfied permits; else deny.
//!
//! If any condition fails to evaluate to a boolean (an error), or a policy's condition could
//! not be taken out of it, the request is decided by Cedar's authorizer over the matching
//! policies instead, so errors and their messages are exactly Cedar's. `tests/equivalence.rs`
//! compares both ways with Cedar's full evaluation on generated sets with and without errors.

use crate::index::{IndexError, ScopeIndex};
use cedar_policy::{
    pst, Authorizer, Decision as CedarDecision, Effect, Entities, EvalResult, Expression, Policy,
    PolicySet, Request, Response,
};
use rustc_hash::FxHashMap;
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
    /// The distinct conditions of the set.
    conditions: Vec<Expression>,
    /// For each policy (in index order): whether it forbids, and its condition's position
    /// in `conditions` (`None`: decide requests it matches with Cedar's authorizer).
    compiled: Vec<(bool, Option<usize>)>,
    authorizer: Authorizer,
}

impl Engine {
    /// Indexes `set` and takes out its policies' conditions.
    pub fn new(set: PolicySet) -> Result<Self, IndexError> {
        let index = ScopeIndex::new(&set)?;
        let mut conditions = Vec::new();
        let mut by_text: FxHashMap<String, usize> = FxHashMap::default();
        let compiled = index
            .policies()
            .iter()
            .map(|policy| {
                let forbid = policy.effect() == Effect::Forbid;
                let condition = condition_text(policy).and_then(|text| {
                    if let Some(&at) = by_text.get(&text) {
                        return Some(at);
                    }
                    let expression: Expression = text.parse().ok()?;
                    conditions.push(expression);
                    by_text.insert(text, conditions.len() - 1);
                    Some(conditions.len() - 1)
                });
                (forbid, condition)
            })
            .collect();
        Ok(Self {
            full: set,
            index,
            conditions,
            compiled,
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
        let (Some(p), Some(a), Some(r)) =
            (request.principal(), request.action(), request.resource())
        else {
            // Requests with unknowns are not built by Vouch; decide them the slow, sure way.
            let response = self.authorizer.is_authorized(request, &self.full, entities);
            return self.decision(&response);
        };
        let matching = self.index.matching_positions(p, a, r, entities);
        if let Some(decision) = self.combine_conditions(&matching, request, entities) {
            return decision;
        }
        let mut subset = PolicySet::new();
        for policy in matching
            .iter()
            .filter_map(|&i| self.index.policies().get(i))
        {
            // INVARIANT: ids are unique in the indexed set, so adding a subset cannot clash.
            let _ = subset.add(policy.clone());
        }
        let response = self.authorizer.is_authorized(request, &subset, entities);
        self.decision(&response)
    }

    /// The decision of steps 1 to 3 of the module's recipe alone, without Cedar's
    /// authorizer: `None` when [`Self::decide`] would hand the request to it (a condition
    /// errs or was not taken out). For tests and diagnostics.
    pub fn decide_by_conditions(&self, request: &Request, entities: &Entities) -> Option<Decision> {
        let matching = self.index.matching_positions(
            request.principal()?,
            request.action()?,
            request.resource()?,
            entities,
        );
        self.combine_conditions(&matching, request, entities)
    }

    /// Number of distinct conditions taken out of the policies.
    pub fn distinct_conditions(&self) -> usize {
        self.conditions.len()
    }

    /// Steps 2 and 3 of the module's recipe for the matching policies; `None` when a
    /// condition errs or was not taken out (Cedar's authorizer then decides).
    fn combine_conditions(
        &self,
        matching: &[usize],
        request: &Request,
        entities: &Entities,
    ) -> Option<Decision> {
        // Few conditions per request: a short list beats a map.
        let mut evaluated: Vec<(usize, bool)> = Vec::with_capacity(matching.len());
        let (mut permits, mut forbids) = (Vec::new(), Vec::new());
        for &i in matching {
            let (forbid, condition) = *self.compiled.get(i)?;
            let condition = condition?;
            let holds = match evaluated.iter().find(|(c, _)| *c == condition) {
                Some(&(_, holds)) => holds,
                None => {
                    let expression = self.conditions.get(condition)?;
                    let holds = match cedar_policy::eval_expression(request, entities, expression) {
                        Ok(EvalResult::Bool(holds)) => holds,
                        _ => return None,
                    };
                    evaluated.push((condition, holds));
                    holds
                }
            };
            if holds {
                let policy = self.index.policies().get(i)?;
                if forbid {
                    forbids.push(policy);
                } else {
                    permits.push(policy);
                }
            }
        }
        let allowed = forbids.is_empty() && !permits.is_empty();
        let deciding = if forbids.is_empty() { permits } else { forbids };
        Some(decision_of(allowed, &deciding, Vec::new()))
    }

    /// Decides `request` by evaluating every policy (Cedar's own way): the reference the
    /// index is tested and benchmarked against.
    pub fn decide_full(&self, request: &Request, entities: &Entities) -> Decision {
        let response = self.authorizer.is_authorized(request, &self.full, entities);
        self.decision(&response)
    }

    fn decision(&self, response: &Response) -> Decision {
        let deciding: Vec<&Policy> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.full.policy(id))
            .collect();
        let errors = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        decision_of(
            response.decision() == CedarDecision::Allow,
            &deciding,
            errors,
        )
    }
}

/// A decision from the deciding policies: their ids and annotations (but `id`), sorted.
fn decision_of(allowed: bool, deciding: &[&Policy], mut errors: Vec<String>) -> Decision {
    let mut policies: Vec<String> = deciding.iter().map(|p| p.id().to_string()).collect();
    policies.sort();
    errors.sort();
    let mut annotations = Vec::new();
    for policy in deciding {
        for (key, value) in policy.annotations() {
            if key != "id" {
                annotations.push(Annotation {
                    policy: policy.id().to_string(),
                    key: key.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
    }
    annotations.sort_by(|a, b| (&a.policy, &a.key).cmp(&(&b.policy, &b.key)));
    Decision {
        allowed,
        policies,
        errors,
        annotations,
    }
}

/// A policy's condition as Cedar text: its `when` clauses and its negated `unless` clauses,
/// in order, joined by `&&` (Cedar's own meaning of several clauses: evaluated left to
/// right, the first false one ends it); `true` with no clause. `None` if the policy cannot
/// be shown as Cedar's public syntax tree.
fn condition_text(policy: &Policy) -> Option<String> {
    let pst::Policy::Static(policy) = policy.to_pst().ok()? else {
        return None;
    };
    let clauses: Vec<String> = policy
        .body()
        .clauses()
        .iter()
        .map(|clause| match clause {
            pst::Clause::When(e) => format!("({e})"),
            pst::Clause::Unless(e) => format!("(!({e}))"),
        })
        .collect();
    Some(if clauses.is_empty() {
        "true".to_owned()
    } else {
        clauses.join(" && ")
    })
}
