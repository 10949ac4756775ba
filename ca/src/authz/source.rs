//! Where a policy set comes from: its files, and its version. The version is the Git commit
//! id of `HEAD` when the policy directory is in a Git work tree (read with gitoxide, a Git
//! library, never by running `git`), else `sha256:<content hash>` of the files.

use std::path::Path;
use vouch_policy::bundle::{self, Bundle, LoadErrors, PolicyFiles};

/// The version of a loaded policy set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyVersion {
    /// What decisions name: the commit id, or `sha256:<content hash>`.
    pub id: String,
    /// The Git commit id of `HEAD`, when the directory is in a Git work tree.
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
    /// Reads `dir` (files bounded in size and count).
    pub fn read(dir: &Path) -> Result<Self, LoadErrors> {
        let files = bundle::read_dir_files(dir)?;
        Ok(Self {
            content_hash: bundle::content_hash(&files),
            commit: head_commit(dir),
            files,
        })
    }

    /// The version this snapshot would have.
    pub fn version(&self) -> PolicyVersion {
        PolicyVersion {
            id: self
                .commit
                .clone()
                .unwrap_or_else(|| format!("sha256:{}", self.content_hash)),
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

/// The commit id of `HEAD` of the Git repository that contains `dir`, if there is one and
/// it has a commit.
pub(crate) fn head_commit(dir: &Path) -> Option<String> {
    let repo = gix::discover(dir).ok()?;
    let id = repo.head_id().ok()?;
    Some(id.detach().to_string())
}
