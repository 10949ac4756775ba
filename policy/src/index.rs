//! A scope index over a policy set: for a request, find exactly the policies whose scope
//! (principal, action, resource constraints) matches, without looking at the others.
//!
//! Cedar's own authorizer checks every policy on every request. A policy whose scope does
//! not match contributes nothing to a Cedar decision: not a reason, not an error (its
//! condition is never evaluated). So evaluating only the scope-matching policies gives the
//! same decision, the same determining policies and the same errors as evaluating all of
//! them; `tests/equivalence.rs` checks this on generated policy sets of 10 to 10,000 policies.
//!
//! Lookup: a policy that names an entity in both its principal and its resource constraint
//! (`==`, `in`, `is .. in`) is filed under that pair; one that names only a principal entity,
//! under it; only a resource entity, under it; failing that, under the principal's entity
//! type (`is`); else it is open. A request looks up every pair and single key from its
//! principal's and resource's lineages (the entity and its ancestors) and its principal's
//! type, adds the open policies, then checks each candidate's full scope exactly.

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};
use std::collections::HashMap;

/// Why a policy set cannot be indexed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    /// Templates are not supported: every policy must be static.
    #[error("policy templates are not supported (template `{0}`)")]
    Template(String),
}

/// A policy set with its scope index.
#[derive(Debug, Clone)]
pub struct ScopeIndex {
    policies: Vec<Policy>,
    /// The scope of each policy, taken apart once (Cedar builds these on every call).
    scopes: Vec<Scope>,
    open: Vec<usize>,
    by_pair: HashMap<(EntityUid, EntityUid), Vec<usize>>,
    by_principal: HashMap<EntityUid, Vec<usize>>,
    by_resource: HashMap<EntityUid, Vec<usize>>,
    by_type: HashMap<EntityTypeName, Vec<usize>>,
}

impl ScopeIndex {
    /// Indexes every policy of `set`.
    pub fn new(set: &PolicySet) -> Result<Self, IndexError> {
        if let Some(t) = set.templates().next() {
            return Err(IndexError::Template(t.id().to_string()));
        }
        let mut index = Self {
            policies: Vec::new(),
            scopes: Vec::new(),
            open: Vec::new(),
            by_pair: HashMap::new(),
            by_principal: HashMap::new(),
            by_resource: HashMap::new(),
            by_type: HashMap::new(),
        };
        for policy in set.policies() {
            let i = index.policies.len();
            let principal = policy.principal_constraint();
            let resource = policy.resource_constraint();
            index.scopes.push(Scope {
                principal: principal.clone(),
                action: policy.action_constraint(),
                resource: resource.clone(),
            });
            match (principal, resource) {
                (
                    PrincipalConstraint::Eq(p)
                    | PrincipalConstraint::In(p)
                    | PrincipalConstraint::IsIn(_, p),
                    ResourceConstraint::Eq(r)
                    | ResourceConstraint::In(r)
                    | ResourceConstraint::IsIn(_, r),
                ) => index.by_pair.entry((p, r)).or_default().push(i),
                (
                    PrincipalConstraint::Eq(uid)
                    | PrincipalConstraint::In(uid)
                    | PrincipalConstraint::IsIn(_, uid),
                    _,
                ) => index.by_principal.entry(uid).or_default().push(i),
                (
                    _,
                    ResourceConstraint::Eq(uid)
                    | ResourceConstraint::In(uid)
                    | ResourceConstraint::IsIn(_, uid),
                ) => index.by_resource.entry(uid).or_default().push(i),
                (PrincipalConstraint::Is(ty), _) => index.by_type.entry(ty).or_default().push(i),
                (PrincipalConstraint::Any, _) => index.open.push(i),
            }
            index.policies.push(policy.clone());
        }
        Ok(index)
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// All policies, in index order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policies whose scope matches the request, in index order.
    pub fn matching(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Vec<&Policy> {
        let principal_up = Lineage::of(principal, entities);
        let action_up = Lineage::of(action, entities);
        let resource_up = Lineage::of(resource, entities);
        let mut candidates: Vec<usize> = self.open.clone();
        for uid in principal_up.selves_and_ancestors() {
            if let Some(list) = self.by_principal.get(uid) {
                candidates.extend_from_slice(list);
            }
            if !self.by_pair.is_empty() {
                for r in resource_up.selves_and_ancestors() {
                    // The pair key is owned; look it up without cloning on the fast path.
                    if let Some(list) = self.by_pair.get(&((*uid).clone(), (*r).clone())) {
                        candidates.extend_from_slice(list);
                    }
                }
            }
        }
        for uid in resource_up.selves_and_ancestors() {
            if let Some(list) = self.by_resource.get(uid) {
                candidates.extend_from_slice(list);
            }
        }
        if let Some(list) = self.by_type.get(principal.type_name()) {
            candidates.extend_from_slice(list);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter(|&i| {
                self.scopes.get(i).is_some_and(|s| {
                    principal_matches(&s.principal, &principal_up)
                        && action_matches(&s.action, &action_up)
                        && resource_matches(&s.resource, &resource_up)
                })
            })
            .filter_map(|i| self.policies.get(i))
            .collect()
    }

    /// A policy set of the policies whose scope matches the request.
    pub fn matching_set(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> PolicySet {
        let mut set = PolicySet::new();
        for p in self.matching(principal, action, resource, entities) {
            // INVARIANT: ids are unique in the indexed set, so adding a subset cannot clash.
            let _ = set.add(p.clone());
        }
        set
    }
}

#[derive(Debug, Clone)]
struct Scope {
    principal: PrincipalConstraint,
    action: ActionConstraint,
    resource: ResourceConstraint,
}

/// An entity and its ancestors (transitively, as `Entities` computes them).
struct Lineage<'a> {
    uid: &'a EntityUid,
    /// Few in practice (a device's zone, a data type's parents): a Vec beats hashing.
    ancestors: Vec<&'a EntityUid>,
}

impl<'a> Lineage<'a> {
    fn of(uid: &'a EntityUid, entities: &'a Entities) -> Self {
        let ancestors = entities
            .ancestors(uid)
            .map(|a| a.collect())
            .unwrap_or_default();
        Self { uid, ancestors }
    }

    fn selves_and_ancestors(&self) -> impl Iterator<Item = &&'a EntityUid> {
        std::iter::once(&self.uid).chain(self.ancestors.iter())
    }

    /// Cedar's `in`: equal, or a descendant.
    fn is_in(&self, target: &EntityUid) -> bool {
        self.uid == target || self.ancestors.contains(&target)
    }

    fn is_type(&self, ty: &EntityTypeName) -> bool {
        self.uid.type_name() == ty
    }
}

fn principal_matches(c: &PrincipalConstraint, p: &Lineage<'_>) -> bool {
    match c {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(uid) => p.uid == uid,
        PrincipalConstraint::In(uid) => p.is_in(uid),
        PrincipalConstraint::Is(ty) => p.is_type(ty),
        PrincipalConstraint::IsIn(ty, uid) => p.is_type(ty) && p.is_in(uid),
    }
}

fn action_matches(c: &ActionConstraint, a: &Lineage<'_>) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => a.uid == uid,
        ActionConstraint::In(uids) => uids.iter().any(|u| a.is_in(u)),
    }
}

fn resource_matches(c: &ResourceConstraint, r: &Lineage<'_>) -> bool {
    match c {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(uid) => r.uid == uid,
        ResourceConstraint::In(uid) => r.is_in(uid),
        ResourceConstraint::Is(ty) => r.is_type(ty),
        ResourceConstraint::IsIn(ty, uid) => r.is_type(ty) && r.is_in(uid),
    }
}
