//! Policy decisions in the server: the active Cedar policy set (loaded from `--policy-dir`,
//! reloaded on change, swapped atomically), an optional candidate set evaluated beside it in
//! shadow mode, and the signed policy bundle (the decision log is the registry's).
//!
//! A set that fails to load never replaces the running one; the failure is kept for
//! `GET /v1/policy/status`. Without `--policy-dir` the active set is empty and every
//! decision is a deny.

pub mod signed;
pub mod source;

use source::{PolicyVersion, Snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use vouch_policy::bundle::{Bundle, LoadErrors};
use vouch_policy::engine::{Decision, Engine};
use vouch_policy::model::{DeviceFacts, MessageContext, ModelError, Target};

/// A loaded policy set, ready to decide.
#[derive(Debug)]
pub struct ActiveSet {
    /// The indexed engine.
    pub engine: Engine,
    /// The loaded files, schema and fleet definitions.
    pub bundle: Bundle,
    /// Its version.
    pub version: PolicyVersion,
    /// When it was loaded (Unix seconds).
    pub loaded_at: i64,
    /// Attestation reference values per device class (`reference-values.json` beside the
    /// policies), if the set has them.
    pub reference: Option<vouch_attestor::reference::ReferenceValues>,
}

/// A load that failed; the previous set stayed active.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LoadFailure {
    /// When (Unix seconds).
    pub at: i64,
    /// The commit of the directory at the time, if any.
    pub commit: Option<String>,
    /// Content hash of the files that failed, if they could be read.
    pub content_hash: Option<String>,
    /// Every problem, as `file:line:column: message`.
    pub problems: Vec<String>,
}

/// What a reload of one set did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The directory holds what is already active.
    Unchanged {
        /// The active version.
        version: String,
    },
    /// A new set is active.
    Loaded {
        /// The previous version (`none` if there was none).
        previous: String,
        /// The new version.
        version: String,
    },
    /// The directory does not load; the previous set stays active.
    Failed(LoadFailure),
    /// No directory is configured for this set.
    NotConfigured,
}

/// One set (active or shadow): its directory, what is loaded, and the last failure.
#[derive(Debug, Default)]
struct Slot {
    dir: Option<PathBuf>,
    current: RwLock<Option<Arc<ActiveSet>>>,
    last_error: RwLock<Option<LoadFailure>>,
    /// Bumped at every swap: long-polls of the signed bundle wait on it.
    swapped: tokio::sync::watch::Sender<u64>,
}

impl Slot {
    fn current(&self) -> Option<Arc<ActiveSet>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    fn last_error(&self) -> Option<LoadFailure> {
        self.last_error.read().ok().and_then(|g| g.clone())
    }

    fn set_current(&self, set: Arc<ActiveSet>) {
        if let Ok(mut g) = self.current.write() {
            *g = Some(set);
        }
        self.swapped.send_modify(|n| *n += 1);
        if let Ok(mut g) = self.last_error.write() {
            *g = None;
        }
    }

    fn set_error(&self, failure: LoadFailure) {
        if let Ok(mut g) = self.last_error.write() {
            *g = Some(failure);
        }
    }

    /// Reads the directory and, if it differs from what is active, loads and swaps it.
    /// With `retry_failed` false, a directory identical to the last failed one is not
    /// parsed again (the watcher's case).
    fn reload(&self, now: i64, retry_failed: bool) -> ReloadOutcome {
        let Some(dir) = &self.dir else {
            return ReloadOutcome::NotConfigured;
        };
        let current = self.current();
        let previous = current
            .as_ref()
            .map_or_else(|| "none".to_owned(), |c| c.version.id.clone());
        let snapshot = match Snapshot::read(dir) {
            Ok(s) => s,
            Err(errors) => return self.fail(now, None, None, &errors),
        };
        let version = snapshot.version();
        if current.as_ref().is_some_and(|c| c.version == version) {
            return ReloadOutcome::Unchanged {
                version: version.id,
            };
        }
        if !retry_failed {
            if let Some(last) = self.last_error() {
                if last.content_hash.as_deref() == Some(version.content_hash.as_str())
                    && last.commit == version.commit
                {
                    return ReloadOutcome::Failed(last);
                }
            }
        }
        match load(snapshot, now) {
            Ok(set) => {
                let version = set.version.id.clone();
                self.set_current(Arc::new(set));
                ReloadOutcome::Loaded { previous, version }
            }
            Err(errors) => self.fail(now, version.commit, Some(version.content_hash), &errors),
        }
    }

    fn fail(
        &self,
        now: i64,
        commit: Option<String>,
        content_hash: Option<String>,
        errors: &LoadErrors,
    ) -> ReloadOutcome {
        let failure = LoadFailure {
            at: now,
            commit,
            content_hash,
            problems: errors.0.iter().map(ToString::to_string).collect(),
        };
        self.set_error(failure.clone());
        ReloadOutcome::Failed(failure)
    }
}

fn load(snapshot: Snapshot, now: i64) -> Result<ActiveSet, LoadErrors> {
    let (bundle, version) = snapshot.load()?;
    let engine = Engine::new(bundle.policies.clone()).map_err(|e| {
        LoadErrors(vec![vouch_policy::bundle::Problem {
            file: "policies".into(),
            line: 0,
            column: 0,
            message: e.to_string(),
        }])
    })?;
    let reference = match bundle.files.get(vouch_policy::bundle::REFERENCE_VALUES) {
        None => None,
        Some(text) => Some(
            vouch_attestor::reference::ReferenceValues::parse(text.as_bytes()).map_err(|e| {
                LoadErrors(vec![vouch_policy::bundle::Problem {
                    file: vouch_policy::bundle::REFERENCE_VALUES.into(),
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                }])
            })?,
        ),
    };
    Ok(ActiveSet {
        engine,
        bundle,
        version,
        loaded_at: now,
        reference,
    })
}

/// A request to decide: `principal` (a device id) does `action` on `resource`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// The acting device's id.
    pub principal: String,
    /// `send`, `publish`, `enroll`, `renew`, or an action of the operator's schema.
    pub action: String,
    /// The device or zone acted on: `{"device": "<id>"}` or `{"zone": "<name>"}`.
    #[schema(value_type = Object)]
    pub resource: Target,
    /// The request context.
    #[schema(value_type = Object)]
    pub context: MessageContext,
}

/// The outcome of a decision in both sets.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The active set's decision (the one enforced).
    pub decision: Decision,
    /// The active set's version (`none` without a policy directory).
    pub version: String,
    /// The candidate set's decision and version, in shadow mode.
    pub shadow: Option<(Decision, String)>,
}

/// The policy sets of the server.
#[derive(Debug)]
pub struct PolicyService {
    active: Slot,
    shadow: Slot,
    /// Reloads run one at a time (the watcher, SIGHUP and the API may race).
    reload_lock: std::sync::Mutex<()>,
}

/// Status of one set, for `GET /v1/policy/status`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SetStatus {
    /// The policy directory.
    pub dir: Option<String>,
    /// The active version, if a set is loaded.
    pub version: Option<PolicyVersion>,
    /// When it was loaded (Unix seconds).
    pub loaded_at: Option<i64>,
    /// Number of policies.
    pub policies: usize,
    /// The last failed load since the active set was loaded, if any.
    pub last_error: Option<LoadFailure>,
}

impl PolicyService {
    /// Loads the active set from `dir` and the candidate set from `shadow_dir`, if given.
    /// A directory that does not load is an error here: the server does not start.
    pub fn load(
        dir: Option<&Path>,
        shadow_dir: Option<&Path>,
        now: i64,
    ) -> Result<Self, (PathBuf, Vec<String>)> {
        let service = Self {
            active: Slot {
                dir: dir.map(Path::to_path_buf),
                ..Slot::default()
            },
            shadow: Slot {
                dir: shadow_dir.map(Path::to_path_buf),
                ..Slot::default()
            },
            reload_lock: std::sync::Mutex::new(()),
        };
        for slot in [&service.active, &service.shadow] {
            if let (Some(dir), ReloadOutcome::Failed(f)) = (&slot.dir, slot.reload(now, true)) {
                return Err((dir.clone(), f.problems));
            }
        }
        Ok(service)
    }

    /// A service with no policies: every decision denies.
    pub fn empty() -> Self {
        Self {
            active: Slot::default(),
            shadow: Slot::default(),
            reload_lock: std::sync::Mutex::new(()),
        }
    }

    /// Whether a policy or shadow directory is configured (so a watcher is worth running).
    pub(crate) fn has_dirs(&self) -> bool {
        self.active.dir.is_some() || self.shadow.dir.is_some()
    }

    /// The active set, if one is loaded.
    pub fn active(&self) -> Option<Arc<ActiveSet>> {
        self.active.current()
    }

    /// Changes whenever another active set is swapped in.
    pub fn active_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.active.swapped.subscribe()
    }

    /// Re-reads both directories and swaps in whatever changed and loads. Blocking (file
    /// reads and Cedar validation): call it from a blocking thread.
    pub fn reload(&self, now: i64, retry_failed: bool) -> (ReloadOutcome, ReloadOutcome) {
        let _turn = self.reload_lock.lock();
        (
            self.active.reload(now, retry_failed),
            self.shadow.reload(now, retry_failed),
        )
    }

    /// Status of the active and the candidate set.
    pub fn status(&self) -> (SetStatus, SetStatus) {
        (status_of(&self.active), status_of(&self.shadow))
    }

    /// Decides `request` with `devices` (facts from the registry, by id) in the active set,
    /// and in the candidate set when one is loaded. Pure: no I/O.
    pub fn decide(
        &self,
        request: &DecisionRequest,
        devices: &BTreeMap<String, DeviceFacts>,
    ) -> Result<Outcome, ModelError> {
        let (decision, version) = match self.active.current() {
            Some(set) => (decide_in(&set, request, devices)?, set.version.id.clone()),
            None => (deny_all(), "none".to_owned()),
        };
        let shadow = self.shadow.current().map(|set| {
            // The candidate may have another schema; a request it cannot take is a deny.
            let d = decide_in(&set, request, devices).unwrap_or_else(|e| Decision {
                errors: vec![e.to_string()],
                ..deny_all()
            });
            (d, set.version.id.clone())
        });
        Ok(Outcome {
            decision,
            version,
            shadow,
        })
    }
}

fn status_of(slot: &Slot) -> SetStatus {
    let current = slot.current();
    SetStatus {
        dir: slot.dir.as_ref().map(|d| d.display().to_string()),
        version: current.as_ref().map(|c| c.version.clone()),
        loaded_at: current.as_ref().map(|c| c.loaded_at),
        policies: current.as_ref().map_or(0, |c| c.engine.len()),
        last_error: slot.last_error(),
    }
}

fn deny_all() -> Decision {
    Decision {
        allowed: false,
        policies: Vec::new(),
        errors: Vec::new(),
        annotations: Vec::new(),
    }
}

fn decide_in(
    set: &ActiveSet,
    request: &DecisionRequest,
    devices: &BTreeMap<String, DeviceFacts>,
) -> Result<Decision, ModelError> {
    vouch_policy::local::decide(
        &set.bundle,
        &set.engine,
        &request.principal,
        &request.action,
        &request.resource,
        &request.context,
        devices,
    )
}
