//! A scope index over a policy set: for a request, find exactly the policies whose scope
//! (principal, action, resource constraints) matches, without looking at the others.
//!
//! Cedar's own authorizer checks every policy on every request. A policy whose scope does
//! not match contributes nothing to a Cedar decision: not a reason, not an error (its
//! condition is never evaluated). So evaluating only the scope-matching policies gives the
//! same decision, the same determining policies and the same errors as evaluating all of
//! them; `tests/equivalence.rs` checks this on generated policy sets of 10 to 10,000 policies.
//!
//! Every entity and entity type named in a scope gets a small number when the index is
//! built, so a lookup hashes integers rather than entity ids. A policy that names an entity
//! in both its principal and its resource constraint (`==`, `in`, `is .. in`) is filed
//! under that pair; one that names only a principal entity, under it; only a resource
//! entity, under it; failing that, under the principal's entity type (`is`); else it is
//! open. A request looks up every pair and single key from its principal's and resource's
//! lineages (the entity and its ancestors) and its principal's type, adds the open
//! policies, then checks each candidate's full scope exactly.

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};
use rustc_hash::FxHashMap as HashMap;

/// Why a policy set cannot be indexed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    /// Templates are not supported: every policy must be static.
    #[error("policy templates are not supported (template `{0}`)")]
    Template(String),
}

/// The number given to an entity or entity type named in some policy's scope. The maps use
/// rustc-hash's Fx hasher (a third of SipHash's cost here): their keys come from the
/// operators' policy files, and a request only looks keys up, so it cannot fill a bucket.
type Num = u32;

/// A policy set with its scope index.
#[derive(Debug, Clone)]
pub struct ScopeIndex {
    policies: Vec<Policy>,
    /// The scope of each policy, taken apart once (Cedar builds these on every call).
    scopes: Vec<Scope>,
    entities: HashMap<EntityUid, Num>,
    types: HashMap<EntityTypeName, Num>,
    open: Vec<usize>,
    by_pair: HashMap<(Num, Num), Vec<usize>>,
    by_principal: HashMap<Num, Vec<usize>>,
    by_resource: HashMap<Num, Vec<usize>>,
    by_type: HashMap<Num, Vec<usize>>,
}

/// One side (principal or resource) of a scope: an optional `is` type and an optional
/// entity the request's side must equal (`==`) or be in (`in`).
#[derive(Debug, Clone, Copy)]
struct Side {
    is: Option<Num>,
    entity: Option<(Num, Relation)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Eq,
    In,
}

#[derive(Debug, Clone)]
enum Actions {
    Any,
    Eq(Num),
    In(Vec<Num>),
}

#[derive(Debug, Clone)]
struct Scope {
    principal: Side,
    action: Actions,
    resource: Side,
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
            entities: HashMap::default(),
            types: HashMap::default(),
            open: Vec::new(),
            by_pair: HashMap::default(),
            by_principal: HashMap::default(),
            by_resource: HashMap::default(),
            by_type: HashMap::default(),
        };
        for policy in set.policies() {
            let i = index.policies.len();
            let principal = index.principal_side(policy.principal_constraint());
            let resource = index.resource_side(policy.resource_constraint());
            let action = match policy.action_constraint() {
                ActionConstraint::Any => Actions::Any,
                ActionConstraint::Eq(uid) => Actions::Eq(index.entity_num(uid)),
                ActionConstraint::In(uids) => {
                    Actions::In(uids.into_iter().map(|u| index.entity_num(u)).collect())
                }
            };
            match (principal.entity, resource.entity, principal.is) {
                (Some((p, _)), Some((r, _)), _) => index.by_pair.entry((p, r)).or_default().push(i),
                (Some((p, _)), None, _) => index.by_principal.entry(p).or_default().push(i),
                (None, Some((r, _)), _) => index.by_resource.entry(r).or_default().push(i),
                (None, None, Some(ty)) => index.by_type.entry(ty).or_default().push(i),
                (None, None, None) => index.open.push(i),
            }
            index.scopes.push(Scope {
                principal,
                action,
                resource,
            });
            index.policies.push(policy.clone());
        }
        Ok(index)
    }

    fn entity_num(&mut self, uid: EntityUid) -> Num {
        let next = self.entities.len() as Num;
        *self.entities.entry(uid).or_insert(next)
    }

    fn type_num(&mut self, ty: EntityTypeName) -> Num {
        let next = self.types.len() as Num;
        *self.types.entry(ty).or_insert(next)
    }

    fn principal_side(&mut self, c: PrincipalConstraint) -> Side {
        match c {
            PrincipalConstraint::Any => Side::any(),
            PrincipalConstraint::Eq(uid) => Side::entity(self.entity_num(uid), Relation::Eq),
            PrincipalConstraint::In(uid) => Side::entity(self.entity_num(uid), Relation::In),
            PrincipalConstraint::Is(ty) => Side::is(self.type_num(ty), None),
            PrincipalConstraint::IsIn(ty, uid) => {
                let ty = self.type_num(ty);
                Side::is(ty, Some((self.entity_num(uid), Relation::In)))
            }
        }
    }

    fn resource_side(&mut self, c: ResourceConstraint) -> Side {
        match c {
            ResourceConstraint::Any => Side::any(),
            ResourceConstraint::Eq(uid) => Side::entity(self.entity_num(uid), Relation::Eq),
            ResourceConstraint::In(uid) => Side::entity(self.entity_num(uid), Relation::In),
            ResourceConstraint::Is(ty) => Side::is(self.type_num(ty), None),
            ResourceConstraint::IsIn(ty, uid) => {
                let ty = self.type_num(ty);
                Side::is(ty, Some((self.entity_num(uid), Relation::In)))
            }
        }
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

    /// The positions (in [`Self::policies`]) of the policies whose scope matches the
    /// request, ascending.
    pub fn matching_positions(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Vec<usize> {
        let principal_up = self.lineage(principal, entities);
        let action_up = self.lineage(action, entities);
        let resource_up = self.lineage(resource, entities);
        let mut candidates: Vec<usize> = self.open.clone();
        for &p in principal_up.selves_and_ancestors() {
            if let Some(list) = self.by_principal.get(&p) {
                candidates.extend_from_slice(list);
            }
            for &r in resource_up.selves_and_ancestors() {
                if let Some(list) = self.by_pair.get(&(p, r)) {
                    candidates.extend_from_slice(list);
                }
            }
        }
        for r in resource_up.selves_and_ancestors() {
            if let Some(list) = self.by_resource.get(r) {
                candidates.extend_from_slice(list);
            }
        }
        if let Some(list) = principal_up.ty.and_then(|ty| self.by_type.get(&ty)) {
            candidates.extend_from_slice(list);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|&i| {
            self.scopes.get(i).is_some_and(|s| {
                s.principal.matches(&principal_up)
                    && s.action.matches(&action_up)
                    && s.resource.matches(&resource_up)
            })
        });
        candidates
    }

    /// The policies whose scope matches the request, in index order.
    pub fn matching(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Vec<&Policy> {
        self.matching_positions(principal, action, resource, entities)
            .into_iter()
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

    /// The numbers of `uid`, its type and its ancestors (transitively, as `Entities`
    /// computes them); entities and types no scope names have no number and are left out,
    /// since no constraint can name them.
    fn lineage(&self, uid: &EntityUid, entities: &Entities) -> Lineage {
        let ancestors = entities
            .ancestors(uid)
            .map(|a| a.filter_map(|a| self.entities.get(a).copied()).collect())
            .unwrap_or_default();
        Lineage {
            selves: [self.entities.get(uid).copied()],
            ty: self.types.get(uid.type_name()).copied(),
            ancestors,
        }
    }
}

/// A request entity's numbers: itself (when some scope names it), its type, its ancestors.
struct Lineage {
    selves: [Option<Num>; 1],
    ty: Option<Num>,
    /// Few in practice (a device's zone, a data type's parents): a Vec beats hashing.
    ancestors: Vec<Num>,
}

impl Lineage {
    fn selves_and_ancestors(&self) -> impl Iterator<Item = &Num> {
        self.selves.iter().flatten().chain(self.ancestors.iter())
    }

    /// Cedar's `in`: equal, or a descendant.
    fn is_in(&self, target: Num) -> bool {
        self.selves[0] == Some(target) || self.ancestors.contains(&target)
    }
}

impl Side {
    fn any() -> Self {
        Self {
            is: None,
            entity: None,
        }
    }

    fn entity(num: Num, relation: Relation) -> Self {
        Self {
            is: None,
            entity: Some((num, relation)),
        }
    }

    fn is(ty: Num, entity: Option<(Num, Relation)>) -> Self {
        Self {
            is: Some(ty),
            entity,
        }
    }

    fn matches(&self, side: &Lineage) -> bool {
        let type_ok = self.is.is_none_or(|ty| side.ty == Some(ty));
        let entity_ok = match self.entity {
            None => true,
            Some((num, Relation::Eq)) => side.selves[0] == Some(num),
            Some((num, Relation::In)) => side.is_in(num),
        };
        type_ok && entity_ok
    }
}

impl Actions {
    fn matches(&self, action: &Lineage) -> bool {
        match self {
            Actions::Any => true,
            Actions::Eq(num) => action.selves[0] == Some(*num),
            Actions::In(nums) => nums.iter().any(|&n| action.is_in(n)),
        }
    }
}
