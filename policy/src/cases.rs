//! Policy test cases, like `opa test`: each case is a request and the expected decision,
//! optionally with the policies expected to decide it and expected annotations. A policy
//! repository's own CI runs them with `vouch policy test DIR`.
//!
//! A test file (`tests/*.json`):
//! ```json
//! { "devices": { "sensor-1": { "zone": "sensors", "trust": "low" } },
//!   "cases": [ { "name": "...", "device": "sensor-1", "action": "send",
//!                "target": { "device": "gw-1" },
//!                "context": { "data_type": "telemetry", "protocol": "mqtt",
//!                             "tls": true, "mtls": true, "size": 512 },
//!                "expect": "allow", "policies": ["sensor-to-gateway"] } ] }
//! ```

use crate::bundle::{Bundle, Problem, MAX_FILE_BYTES};
use crate::engine::Engine;
use crate::model::{entities, request, DeviceFacts, MessageContext, Target};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Expected outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// One test case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks.
    pub name: String,
    /// The acting device (a key of the file's `devices`).
    pub device: String,
    /// The action: `send`, `publish`, `enroll`, `renew`.
    pub action: String,
    /// The device or zone acted on.
    pub target: Target,
    /// The request context.
    pub context: MessageContext,
    /// Expected decision.
    pub expect: Expect,
    /// If given, exactly these policies must decide it.
    pub policies: Option<Vec<String>>,
    /// If given, these annotations (key → value) must be in the decision.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A test file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The devices the cases use.
    pub devices: BTreeMap<String, DeviceFacts>,
    /// The cases.
    pub cases: Vec<Case>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// `file: name`.
    pub name: String,
    /// `None` if it passed, else why not.
    pub failure: Option<String>,
}

/// Runs every `tests/*.json` file of `dir` against `bundle`. Problems reading the files are
/// returned as errors; failing cases as results.
pub fn run_dir(dir: &Path, bundle: &Bundle) -> Result<Vec<CaseResult>, Vec<Problem>> {
    let engine = Engine::new(bundle.policies.clone()).map_err(|e| {
        vec![Problem {
            file: "policies".into(),
            line: 0,
            column: 0,
            message: e.to_string(),
        }]
    })?;
    let mut files: Vec<String> = std::fs::read_dir(dir.join("tests"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .map(|n| format!("tests/{n}"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut problems = Vec::new();
    let mut results = Vec::new();
    for file in files {
        let path = dir.join(&file);
        let too_big = std::fs::metadata(&path).map_or(true, |m| m.len() > MAX_FILE_BYTES);
        let parsed = if too_big {
            Err(format!("missing or larger than {MAX_FILE_BYTES} bytes"))
        } else {
            std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<CaseFile>(&t).map_err(|e| e.to_string()))
        };
        match parsed {
            Ok(case_file) => results.extend(run_file(&file, &case_file, bundle, &engine)),
            Err(message) => problems.push(Problem {
                file,
                line: 0,
                column: 0,
                message,
            }),
        }
    }
    if problems.is_empty() {
        Ok(results)
    } else {
        Err(problems)
    }
}

fn run_file(file: &str, cases: &CaseFile, bundle: &Bundle, engine: &Engine) -> Vec<CaseResult> {
    let schema = Some(&bundle.schema);
    let entities = match entities(&bundle.fleet, &cases.devices, schema) {
        Ok(e) => e,
        Err(e) => {
            return vec![CaseResult {
                name: format!("{file}: devices"),
                failure: Some(e.to_string()),
            }]
        }
    };
    cases
        .cases
        .iter()
        .map(|case| {
            let name = format!("{file}: {}", case.name);
            let failure = match request(
                &case.device,
                &case.action,
                &case.target,
                &case.context,
                schema,
            ) {
                Err(e) => Some(e.to_string()),
                Ok(req) => check(case, &engine.decide(&req, &entities)),
            };
            CaseResult { name, failure }
        })
        .collect()
}

fn check(case: &Case, d: &crate::engine::Decision) -> Option<String> {
    let got = if d.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    if got != case.expect {
        return Some(format!(
            "expected {:?}, got {got:?} (deciding policies {:?}, errors {:?})",
            case.expect, d.policies, d.errors
        ));
    }
    if let Some(expected) = &case.policies {
        let mut expected = expected.clone();
        expected.sort();
        if expected != d.policies {
            return Some(format!(
                "expected deciding policies {expected:?}, got {:?}",
                d.policies
            ));
        }
    }
    if let Some(expected) = &case.annotations {
        for (key, value) in expected {
            if !d
                .annotations
                .iter()
                .any(|a| &a.key == key && &a.value == value)
            {
                return Some(format!(
                    "expected annotation {key}={value:?}, got {:?}",
                    d.annotations
                ));
            }
        }
    }
    None
}
