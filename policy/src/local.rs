//! A policy set ready to decide with the facts given: the server decides with the registry's
//! facts, an agent with the facts the peer directory gives (from a signed bundle it verified).
//! Both go through [`decide`], so a request is decided the same way at both ends.

use crate::bundle::{load_files, Bundle, LoadErrors, PolicyFiles};
use crate::engine::{Decision, Engine};
use crate::index::IndexError;
use crate::model::{self, DeviceFacts, MessageContext, ModelError, Target};
use cedar_policy::Entities;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Why a policy set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalPolicyError {
    /// The files do not load.
    #[error("the policy files do not load: {0:?}")]
    Load(LoadErrors),
    /// The policies cannot be indexed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Loaded policies and their engine.
#[derive(Debug)]
pub struct LocalPolicy {
    /// The files, schema and fleet definitions.
    pub bundle: Bundle,
    /// The indexed engine.
    pub engine: Engine,
    /// The entities built for the devices' facts lately decided with (see [`EntityCache`]).
    entities: EntityCache,
}

/// Most device-fact sets whose entities a [`LocalPolicy`] keeps: a sidecar decides for its
/// own device and the few peers it talks to, whose facts change rarely.
const CACHED_ENTITY_SETS: usize = 64;

/// The fleet's entities with the devices of a request added and checked against the
/// schema, kept by the devices' facts: building and checking them costs more than the
/// indexed decision itself, and a sidecar decides for the same two devices message after
/// message. Facts that change (a quarantine, an attestation) are a different key. Bounded:
/// when full, an entry is let go before one is added.
#[derive(Debug, Default)]
struct EntityCache {
    sets: std::sync::Mutex<HashMap<BTreeMap<String, DeviceFacts>, Arc<Entities>>>,
}

impl EntityCache {
    fn get_or_build(
        &self,
        devices: &BTreeMap<String, DeviceFacts>,
        build: impl FnOnce() -> Result<Entities, ModelError>,
    ) -> Result<Arc<Entities>, ModelError> {
        if let Some(found) = self.sets.lock().ok().and_then(|s| s.get(devices).cloned()) {
            return Ok(found);
        }
        let built = Arc::new(build()?);
        if let Ok(mut sets) = self.sets.lock() {
            if sets.len() >= CACHED_ENTITY_SETS {
                if let Some(key) = sets.keys().next().cloned() {
                    sets.remove(&key);
                }
            }
            sets.insert(devices.clone(), Arc::clone(&built));
        }
        Ok(built)
    }
}

impl LocalPolicy {
    /// Loads `files` (as a signed bundle carries them) and indexes the policies.
    pub fn from_files(files: PolicyFiles) -> Result<Self, LocalPolicyError> {
        let bundle = load_files(files).map_err(LocalPolicyError::Load)?;
        let engine = Engine::new(bundle.policies.clone())?;
        Ok(Self {
            bundle,
            engine,
            entities: EntityCache::default(),
        })
    }

    /// Decides whether `principal` may do `action` on `resource` in `context`, with the
    /// facts of the devices involved.
    pub fn decide(
        &self,
        principal: &str,
        action: &str,
        resource: &Target,
        context: &MessageContext,
        devices: &BTreeMap<String, DeviceFacts>,
    ) -> Result<Decision, ModelError> {
        let schema = Some(&self.bundle.schema);
        let entities = self.entities.get_or_build(devices, || {
            model::with_devices(&self.bundle.fleet_entities, devices, schema)
        })?;
        decide_among(
            &self.bundle,
            &self.engine,
            &entities,
            principal,
            action,
            resource,
            context,
        )
    }
}

/// Decides a request with `bundle`'s schema and fleet definitions and `engine`: the one way
/// requests are decided, in the server and in agents.
pub fn decide(
    bundle: &Bundle,
    engine: &Engine,
    principal: &str,
    action: &str,
    resource: &Target,
    context: &MessageContext,
    devices: &BTreeMap<String, DeviceFacts>,
) -> Result<Decision, ModelError> {
    let entities = model::with_devices(&bundle.fleet_entities, devices, Some(&bundle.schema))?;
    decide_among(
        bundle, engine, &entities, principal, action, resource, context,
    )
}

/// [`decide`] with the entities built.
fn decide_among(
    bundle: &Bundle,
    engine: &Engine,
    entities: &Entities,
    principal: &str,
    action: &str,
    resource: &Target,
    context: &MessageContext,
) -> Result<Decision, ModelError> {
    let request = model::request(principal, action, resource, context, Some(&bundle.schema))?;
    Ok(engine.decide(&request, entities))
}
