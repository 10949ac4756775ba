//! A policy set ready to decide with the facts given: the server decides with the registry's
//! facts, an agent with the facts the peer directory gives (from a signed bundle it verified).
//! Both go through [`decide`], so a request is decided the same way at both ends.

use crate::bundle::{load_files, Bundle, LoadErrors, PolicyFiles};
use crate::engine::{Decision, Engine};
use crate::index::IndexError;
use crate::model::{self, DeviceFacts, MessageContext, ModelError, Target};
use std::collections::BTreeMap;

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
}

impl LocalPolicy {
    /// Loads `files` (as a signed bundle carries them) and indexes the policies.
    pub fn from_files(files: PolicyFiles) -> Result<Self, LocalPolicyError> {
        let bundle = load_files(files).map_err(LocalPolicyError::Load)?;
        let engine = Engine::new(bundle.policies.clone())?;
        Ok(Self { bundle, engine })
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
        decide(
            &self.bundle,
            &self.engine,
            principal,
            action,
            resource,
            context,
            devices,
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
    let schema = Some(&bundle.schema);
    let entities = model::with_devices(&bundle.fleet_entities, devices, schema)?;
    let request = model::request(principal, action, resource, context, schema)?;
    Ok(engine.decide(&request, &entities))
}
