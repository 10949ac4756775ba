//! Where a policy set comes from: its files, and its version. The version is the Git commit
//! id of `HEAD` when the policy directory is in a Git work tree and its files are the ones
//! committed (read with gitoxide, a Git library, never by running `git`);
//! `<commit>+dirty:sha256:<content hash>` when they differ from `HEAD`; else
//! `sha256:<content hash>` of the files.

use std::path::Path;
use vouch_policy::bundle::{self, Bundle, LoadErrors, PolicyFiles};

/// The version of a loaded policy set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyVersion {
    /// What decisions name: the commit id; `<commit>+dirty:sha256:<content hash>` when the
    /// files loaded are not the committed ones; or `sha256:<content hash>` outside Git.
    pub id: String,
    /// The Git commit id of `HEAD`, when the directory is in a Git work tree, followed by
    /// `+dirty` when the files loaded differ from that commit's.
    pub commit: Option<String>,
    /// SHA-256 over the files' names and contents: what was actually loaded, committed or not.
    pub content_hash: String,
}

/// A read of the directory: its files and commit, not yet parsed.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The files.
    pub files: PolicyFiles,
    /// The commit of `HEAD`, if any.
    pub commit: Option<String>,
    /// Content hash of the files.
    pub content_hash: String,
}

impl Snapshot {
    /// Reads `dir` (files bounded in size and count), and whether the files read are the
    /// ones committed in `HEAD`.
    pub fn read(dir: &Path) -> Result<Self, LoadErrors> {
        let files = bundle::read_dir_files(dir)?;
        // HEAD is read after the files and its tree compared with them: the commit is named
        // only if it holds exactly the files loaded (an edit not yet committed, or a
        // checkout in progress between the two reads, makes the snapshot dirty).
        let commit = committed(dir).map(|(commit, committed_files)| {
            if committed_files == files {
                commit
            } else {
                format!("{commit}{DIRTY}")
            }
        });
        Ok(Self {
            content_hash: bundle::content_hash(&files),
            commit,
            files,
        })
    }

    /// The version this snapshot would have: the commit id when the files are the committed
    /// ones; `<commit>+dirty:sha256:<content hash>` when the work tree differs from `HEAD`
    /// (each different content a different version); `sha256:<content hash>` outside Git.
    pub fn version(&self) -> PolicyVersion {
        let hash = format!("sha256:{}", self.content_hash);
        PolicyVersion {
            id: match &self.commit {
                Some(commit) if commit.ends_with(DIRTY) => format!("{commit}:{hash}"),
                Some(commit) => commit.clone(),
                None => hash,
            },
            commit: self.commit.clone(),
            content_hash: self.content_hash.clone(),
        }
    }

    /// Parses and validates the files.
    pub fn load(self) -> Result<(Bundle, PolicyVersion), LoadErrors> {
        let version = self.version();
        Ok((bundle::load_files(self.files)?, version))
    }
}

/// Marks a commit whose tree is not what was loaded.
const DIRTY: &str = "+dirty";

/// The commit id of `HEAD` of the Git repository whose work tree holds `dir`, and the policy
/// files of `dir` as that commit has them (named as [`bundle::read_dir_files`] names them),
/// if there is such a repository with a commit.
fn committed(dir: &Path) -> Option<(String, bundle::PolicyFiles)> {
    let repo = gix::discover(dir).ok()?;
    let commit = repo.head_commit().ok()?;
    let id = commit.id.to_string();
    let workdir = repo.workdir()?.canonicalize().ok()?;
    let prefix = dir.canonicalize().ok()?;
    let prefix = prefix.strip_prefix(&workdir).ok()?;
    let tree = commit.tree().ok()?;
    let blob = |rel: &str| -> Option<String> {
        let entry = tree.lookup_entry_by_path(prefix.join(rel)).ok()??;
        if !entry.mode().is_blob() {
            return None;
        }
        String::from_utf8(entry.object().ok()?.detach().data).ok()
    };
    let mut files = bundle::PolicyFiles::new();
    for rel in ["schema.cedarschema", "fleet.json", bundle::REFERENCE_VALUES] {
        if let Some(text) = blob(rel) {
            files.insert(rel.to_owned(), text);
        }
    }
    let policies = tree
        .lookup_entry_by_path(prefix.join("policies"))
        .ok()
        .flatten()
        .and_then(|entry| entry.object().ok()?.try_into_tree().ok());
    if let Some(policies) = policies {
        for entry in policies.iter().flatten() {
            let name = entry.filename().to_string();
            if name.ends_with(".cedar") {
                let rel = format!("policies/{name}");
                if let Some(text) = blob(&rel) {
                    files.insert(rel, text);
                }
            }
        }
    }
    Some((id, files))
}
