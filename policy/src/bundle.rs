//! Loading a policy directory: parse everything, validate strictly against the schema, and
//! report every problem as `file:line:column: message`. A directory that fails to load
//! yields no bundle, so a running set is never replaced by a broken one.
//!
//! Layout:
//! ```text
//! schema.cedarschema      the Cedar schema
//! fleet.json              zones and data types
//! policies/*.cedar        policies; each needs a unique `@id("...")` or gets `<file>.<n>`
//! tests/*.json            policy test cases (see `cases`)
//! ```

use crate::model::FleetDefs;
use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Largest file read from a policy directory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most policy files in a directory.
pub const MAX_POLICY_FILES: usize = 1000;

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the policy directory.
    pub file: String,
    /// 1-based line (0 when the problem is about the whole file).
    pub line: usize,
    /// 1-based column (0 when the problem is about the whole file).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found while loading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy directory does not load ({} problem(s)):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<Problem>);

/// A loaded, validated policy directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The schema.
    pub schema: Schema,
    /// The policies, with their ids.
    pub policies: PolicySet,
    /// Zones and data types.
    pub fleet: FleetDefs,
    /// The zones and data types as Cedar entities, built once: a decision adds only the
    /// devices it is about (see [`crate::model::with_devices`]).
    pub fleet_entities: cedar_policy::Entities,
    /// Which file each policy came from.
    pub origins: BTreeMap<String, String>,
    /// SHA-256 over every file's name and contents (hex, see [`content_hash`]): the version
    /// when the directory is not a Git work tree.
    pub content_hash: String,
    /// The files it was loaded from.
    pub files: PolicyFiles,
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Problems from a Cedar diagnostic, located with its first label in `text`.
fn located(file: &str, text: &str, diag: &dyn Diagnostic) -> Problem {
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let (line, column) = offset.map_or((0, 0), |o| line_col(text, o));
    let mut message = diag.to_string();
    if let Some(help) = diag.help() {
        message.push_str(&format!(" ({help})"));
    }
    Problem {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

fn whole(file: &str, message: impl Into<String>) -> Problem {
    Problem {
        file: file.to_owned(),
        line: 0,
        column: 0,
        message: message.into(),
    }
}

fn read(dir: &Path, rel: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match read_regular_file(&dir.join(rel)) {
        Ok(text) => Some(text),
        Err(message) => {
            problems.push(whole(rel, message));
            None
        }
    }
}

/// Reads `path` if it is a regular file of at most [`MAX_FILE_BYTES`]. A policy directory
/// holds only regular files: what is read here is parsed, reported through the API and shipped
/// to every agent, so a symbolic link (to a key beside the policies, say), a device or a pipe
/// is refused without being read, and so is a path replaced between the check and the read.
fn read_regular_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let seen = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !seen.file_type().is_file() {
        return Err(if seen.file_type().is_symlink() {
            "is a symbolic link; policy files must be regular files".into()
        } else {
            "is not a regular file".into()
        });
    }
    if seen.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let opened = file.metadata().map_err(|e| e.to_string())?;
    if (opened.dev(), opened.ino()) != (seen.dev(), seen.ino()) {
        return Err("changed while it was read; try again".into());
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// The policy files of `dir`, sorted by name.
fn policy_files(dir: &Path, problems: &mut Vec<Problem>) -> Vec<String> {
    let mut files = Vec::new();
    let policies = dir.join("policies");
    match std::fs::symlink_metadata(&policies) {
        Ok(m) if !m.is_dir() => {
            problems.push(whole(
                "policies",
                "is not a directory (symbolic links are refused)",
            ));
            return files;
        }
        _ => {}
    }
    match std::fs::read_dir(policies) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".cedar") {
                    files.push(format!("policies/{name}"));
                }
            }
        }
        Err(e) => problems.push(whole("policies", e.to_string())),
    }
    files.sort();
    if files.len() > MAX_POLICY_FILES {
        problems.push(whole(
            "policies",
            format!("more than {MAX_POLICY_FILES} policy files"),
        ));
        files.truncate(MAX_POLICY_FILES);
    }
    files
}

/// The files of a policy directory that make up a policy set, by relative path
/// (`schema.cedarschema`, `fleet.json`, `policies/*.cedar`, and optionally
/// [`REFERENCE_VALUES`]): what is hashed, signed and served as the bundle. Test cases are not
/// part of it.
pub type PolicyFiles = BTreeMap<String, String>;

/// Reads the files of the policy directory `dir`, each bounded in size.
pub fn read_dir_files(dir: &Path) -> Result<PolicyFiles, LoadErrors> {
    let mut problems = Vec::new();
    let mut files = PolicyFiles::new();
    for rel in ["schema.cedarschema", "fleet.json"] {
        if let Some(text) = read(dir, rel, &mut problems) {
            files.insert(rel.to_owned(), text);
        }
    }
    for rel in policy_files(dir, &mut problems) {
        if let Some(text) = read(dir, &rel, &mut problems) {
            files.insert(rel, text);
        }
    }
    // Present as anything, even a dangling symbolic link: `read` says why it is refused.
    if std::fs::symlink_metadata(dir.join(REFERENCE_VALUES)).is_ok() {
        if let Some(text) = read(dir, REFERENCE_VALUES, &mut problems) {
            files.insert(REFERENCE_VALUES.to_owned(), text);
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(LoadErrors(problems))
    }
}

/// SHA-256 over every file's name and contents (lengths framed), lowercase hex.
pub fn content_hash(files: &PolicyFiles) -> String {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, text) in files {
        hasher.update(&(name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&(text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    hex::encode(hasher.finish())
}

/// Loads and validates the policy directory `dir`.
pub fn load_dir(dir: &Path) -> Result<Bundle, LoadErrors> {
    load_files(read_dir_files(dir)?)
}

/// The attestation reference values per device class, kept and versioned with the policies
/// (optional; the server parses and checks it with the attestor when it loads the set).
pub const REFERENCE_VALUES: &str = "reference-values.json";

/// Loads and validates a policy set from its files (as read by [`read_dir_files`] or
/// received in a signed bundle). Names must be `schema.cedarschema`, `fleet.json`,
/// `policies/<name>.cedar` or [`REFERENCE_VALUES`]; anything else is a problem.
pub fn load_files(files: PolicyFiles) -> Result<Bundle, LoadErrors> {
    let mut problems = Vec::new();
    if files.len() > MAX_POLICY_FILES + 3 {
        problems.push(whole(
            "policies",
            format!("more than {MAX_POLICY_FILES} policy files"),
        ));
        return Err(LoadErrors(problems));
    }
    for (name, text) in &files {
        let known = name == "schema.cedarschema"
            || name == "fleet.json"
            || name == REFERENCE_VALUES
            || (name.starts_with("policies/")
                && name.ends_with(".cedar")
                && !name.trim_start_matches("policies/").contains('/'));
        if !known {
            problems.push(whole(name, "not a file of a policy set"));
        } else if text.len() as u64 > MAX_FILE_BYTES {
            problems.push(whole(name, format!("larger than {MAX_FILE_BYTES} bytes")));
        }
    }
    if !problems.is_empty() {
        return Err(LoadErrors(problems));
    }

    let schema = match files.get("schema.cedarschema") {
        None => {
            problems.push(whole("schema.cedarschema", "missing"));
            None
        }
        Some(text) => match Schema::from_cedarschema_str(text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                problems.push(located("schema.cedarschema", text, &e));
                None
            }
        },
    };

    let fleet = match files.get("fleet.json") {
        None => {
            problems.push(whole("fleet.json", "missing"));
            None
        }
        Some(text) => match serde_json::from_str::<FleetDefs>(text) {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push(Problem {
                    file: "fleet.json".into(),
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                });
                None
            }
        },
    };

    // Parse each file on its own so that every location is relative to its file.
    let mut policies = PolicySet::new();
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    for (file, text) in files.iter().filter(|(n, _)| n.starts_with("policies/")) {
        let parsed = match text.parse::<PolicySet>() {
            Ok(set) => set,
            Err(e) => {
                for err in e.iter() {
                    problems.push(located(file, text, err));
                }
                continue;
            }
        };
        let stem = file
            .trim_start_matches("policies/")
            .trim_end_matches(".cedar")
            .to_owned();
        // Cedar names them `policy0`, `policy1`, ... in source order.
        let mut in_order: Vec<(usize, Policy)> = parsed
            .policies()
            .map(|p| {
                let n = p
                    .id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse()
                    .unwrap_or(usize::MAX);
                (n, p.clone())
            })
            .collect();
        in_order.sort_by_key(|(n, _)| *n);
        for (n, policy) in in_order {
            let id = policy
                .annotation("id")
                .map_or_else(|| format!("{stem}.{n}"), str::to_owned);
            if let Some(first) = origins.get(&id) {
                problems.push(whole(
                    file,
                    format!("duplicate policy id `{id}` (also in {first})"),
                ));
                continue;
            }
            let policy: Policy = policy.new_id(PolicyId::new(&id));
            if let Err(e) = policies.add(policy) {
                problems.push(whole(file, e.to_string()));
                continue;
            }
            origins.insert(id, file.clone());
        }
    }

    if let Some(schema) = &schema {
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for e in result.validation_errors() {
            let file = origins
                .get(&e.policy_id().to_string())
                .cloned()
                .unwrap_or_default();
            let text = files.get(&file).map(String::as_str).unwrap_or("");
            problems.push(located(&file, text, e));
        }
    }

    let fleet_entities = match (&schema, &fleet) {
        (Some(schema), Some(fleet)) => crate::model::fleet_entities(fleet, Some(schema))
            .map_err(|e| problems.push(whole("fleet.json", e.to_string())))
            .ok(),
        _ => None,
    };
    match (schema, fleet, fleet_entities, problems.is_empty()) {
        (Some(schema), Some(fleet), Some(fleet_entities), true) => Ok(Bundle {
            schema,
            policies,
            fleet,
            fleet_entities,
            origins,
            content_hash: content_hash(&files),
            files,
        }),
        _ => Err(LoadErrors(problems)),
    }
}
