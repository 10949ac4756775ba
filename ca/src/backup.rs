//! `vouch backup` and `vouch restore`: the data directory (CA certificates and keys, token
//! keys, trust domain) and a consistent copy of the SQLite registry, taken while the server
//! runs, with a `MANIFEST.sha256` that `sha256sum -c` reads too. A PostgreSQL registry is
//! backed up with `pg_dump` beside it (the README's backup section).
//!
//! The backup holds the CA's private keys: it is written owner-only (directory 0700, files
//! 0600) and belongs where the keys themselves may be.

use crate::datadir::{DataDir, DataFile};
use std::path::Path;

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST.sha256";

/// The data directory's files a backup takes (each if present), the database apart.
const FILES: [DataFile; 7] = [
    DataFile::RootCert,
    DataFile::RootKey,
    DataFile::IssuingCert,
    DataFile::IssuingKey,
    DataFile::BootstrapTokenKey,
    DataFile::OperatorTokenKey,
    DataFile::TrustDomain,
];

/// What a backup or restore did, for the operator.
#[derive(Debug, Default)]
pub struct Report {
    /// Files written.
    pub files: Vec<String>,
    /// Whether the SQLite registry was copied.
    pub database: bool,
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("`{}`: {e}", path.display())
}

/// Creates `path` 0700, or says why not.
fn create_private_dir(path: &Path) -> Result<(), String> {
    crate::datadir::create_private_dir(path).map_err(|e| e.to_string())
}

/// Copies `from` to a new file `to` with `mode`.
fn copy_new(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| io(from, e))?;
    write_new(to, &bytes, mode)
}

fn write_new(to: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    crate::datadir::write_new(to, bytes, mode).map_err(|e| e.to_string())
}

/// `path` with `suffix` appended to its file name, beside it: where a directory is built
/// before it is renamed into place, so a failure leaves nothing at `path`.
fn staging(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Builds a directory at `staged` with `build`, then renames it to `target` (which must not
/// exist, or be an empty directory); on any failure removes what was built.
async fn build_then_rename<F, Fut>(staged: &Path, target: &Path, build: F) -> Result<Report, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Report, String>>,
{
    if staged.exists() {
        return Err(format!(
            "`{}` exists (left by an interrupted run?): remove it first",
            staged.display()
        ));
    }
    create_private_dir(staged)?;
    let built = match build().await {
        Ok(report) => std::fs::rename(staged, target)
            .map(|()| report)
            .map_err(|e| io(target, e)),
        Err(e) => Err(e),
    };
    if built.is_err() {
        let _ = std::fs::remove_dir_all(staged);
    }
    built
}

fn sha256_hex(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &bytes,
    )))
}

/// The SQLite file a database URL names, or `None` for another database.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(rest.split('?').next().unwrap_or(rest))
}

/// Backs up `data_dir` (and its SQLite registry at `database_url`) into the new directory
/// `out`.
pub async fn backup(data_dir: &DataDir, database_url: &str, out: &Path) -> Result<Report, String> {
    if !data_dir.exists(DataFile::IssuingCert) {
        return Err(format!(
            "`{}` holds no CA: nothing to back up",
            data_dir.path().display()
        ));
    }
    if out.exists() {
        return Err(format!(
            "`{}` exists: a backup goes into a new directory",
            out.display()
        ));
    }
    let staged = staging(out, ".partial");
    build_then_rename(&staged, out, || {
        backup_into(data_dir, database_url, &staged)
    })
    .await
}

/// Writes the backup into the directory `out` (created, empty).
async fn backup_into(data_dir: &DataDir, database_url: &str, out: &Path) -> Result<Report, String> {
    let mut report = Report::default();
    let mut manifest = String::new();
    for file in FILES {
        let from = data_dir.file(file);
        if !from.exists() {
            continue;
        }
        let to = out.join(file.file_name());
        copy_new(&from, &to, 0o600)?;
        manifest.push_str(&format!("{}  {}\n", sha256_hex(&to)?, file.file_name()));
        report.files.push(file.file_name().to_owned());
    }
    if let Some(path) = sqlite_path(database_url) {
        use sqlx::ConnectOptions;
        use std::str::FromStr;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|e| format!("database `{path}`: {e}"))?
            .read_only(true);
        let mut connection = options
            .connect()
            .await
            .map_err(|e| format!("database `{path}`: {e}"))?;
        let copy = out.join(DataFile::Database.file_name());
        // A consistent copy of the database as of one transaction, taken beside a running
        // server (its writers wait for no one).
        sqlx::query("VACUUM INTO ?")
            .bind(copy.to_string_lossy().into_owned())
            .execute(&mut connection)
            .await
            .map_err(|e| format!("copying the database `{path}`: {e}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io(&copy, e))?;
        }
        manifest.push_str(&format!(
            "{}  {}\n",
            sha256_hex(&copy)?,
            DataFile::Database.file_name()
        ));
        report.database = true;
    }
    write_new(&out.join(MANIFEST), manifest.as_bytes(), 0o600)?;
    Ok(report)
}

/// Restores the backup in `from` into `data_dir`, which must not exist or be empty: every
/// file is checked against the manifest before anything is written, and the data directory
/// is built beside it and renamed into place, so a failure leaves nothing.
///
/// Sidecars keep the newest CRL number they have seen and ignore lower ones, and the live
/// server may have signed CRLs after the backup. So the restored registry's CRL number is
/// raised to at least the current time in milliseconds (above any sequence a fleet reaches)
/// and its stored CRL dropped: the restored server's first CRL outnumbers every one before.
pub async fn restore(from: &Path, data_dir: &DataDir, now_ms: i64) -> Result<Report, String> {
    let manifest_path = from.join(MANIFEST);
    let manifest = std::fs::read_to_string(&manifest_path).map_err(|e| io(&manifest_path, e))?;
    let known: Vec<DataFile> = FILES.into_iter().chain([DataFile::Database]).collect();
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in manifest.lines().enumerate() {
        let Some((hash, name)) = line.split_once("  ") else {
            problems.push(format!("{MANIFEST} line {}: not `HASH  NAME`", i + 1));
            continue;
        };
        let Some(file) = known.iter().find(|f| f.file_name() == name) else {
            problems.push(format!("{MANIFEST} line {}: unknown file `{name}`", i + 1));
            continue;
        };
        match sha256_hex(&from.join(name)) {
            Ok(actual) if actual == hash => entries.push(*file),
            Ok(_) => problems.push(format!("`{name}` does not match its SHA-256 in {MANIFEST}")),
            Err(e) => problems.push(e),
        }
    }
    if !entries.contains(&DataFile::IssuingCert) || !entries.contains(&DataFile::IssuingKey) {
        problems.push("the backup holds no issuing CA certificate and key".to_owned());
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let root = data_dir.path();
    match std::fs::read_dir(root) {
        Ok(mut listing) => {
            if listing.next().is_some() {
                return Err(format!(
                    "`{}` is not empty: restore into a new data directory",
                    root.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(root, e)),
    }
    let staged = DataDir::new(staging(root, ".restoring"));
    build_then_rename(staged.path(), root, || async {
        let mut report = Report::default();
        for file in entries {
            let mode = match file {
                DataFile::RootCert | DataFile::IssuingCert | DataFile::TrustDomain => 0o644,
                _ => 0o600,
            };
            copy_new(&from.join(file.file_name()), &staged.file(file), mode)?;
            if file == DataFile::Database {
                renumber_crls(&staged.file(file), now_ms).await?;
                report.database = true;
            } else {
                report.files.push(file.file_name().to_owned());
            }
        }
        Ok(report)
    })
    .await
}

/// Raises the CRL number of the SQLite registry at `path` to at least `floor` and drops its
/// stored CRL (see [`restore`]).
async fn renumber_crls(path: &Path, floor: i64) -> Result<(), String> {
    use sqlx::ConnectOptions;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false);
    let mut connection = options.connect().await.map_err(|e| io(path, e))?;
    sqlx::query(
        "UPDATE crl_state SET crl_number = MAX(crl_number, ?), der = NULL, this_update = NULL \
         WHERE id = 1",
    )
    .bind(floor)
    .execute(&mut connection)
    .await
    .map_err(|e| io(path, e))?;
    Ok(())
}
