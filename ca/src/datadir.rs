//! The server's data directory: where the CA keys, the JWT signing keys and (by default) the
//! SQLite registry live. Secret files are created with mode 0600 and refused if they are
//! readable by anyone else; the directory itself is 0700.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors reading or writing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// An I/O error on a named file.
    #[error("`{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A secret file is readable by group or others.
    #[error(
        "`{path}` has mode {mode:o}: secret files must be readable by their owner only (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file that must not be overwritten already exists.
    #[error("`{0}` already exists; refusing to overwrite it")]
    Exists(PathBuf),
}

/// A data directory and the names of the files in it.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Files kept in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFile {
    /// Root CA certificate (PEM).
    RootCert,
    /// Root CA private key (PKCS#8 PEM, secret).
    RootKey,
    /// Issuing (intermediate) CA certificate (PEM).
    IssuingCert,
    /// Issuing CA private key (PKCS#8 PEM, secret).
    IssuingKey,
    /// HMAC key for bootstrap tokens (secret).
    BootstrapTokenKey,
    /// HMAC key for operator tokens (secret).
    OperatorTokenKey,
    /// The SPIFFE trust domain (text).
    TrustDomain,
    /// The default SQLite registry.
    Database,
}

impl DataFile {
    /// The file name inside the data directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::RootCert => "root.pem",
            Self::RootKey => "root.key",
            Self::IssuingCert => "issuing.pem",
            Self::IssuingKey => "issuing.key",
            Self::BootstrapTokenKey => "bootstrap-token.key",
            Self::OperatorTokenKey => "operator-token.key",
            Self::TrustDomain => "trust-domain",
            Self::Database => "vouch.db",
        }
    }
}

impl DataDir {
    /// A data directory at `root` (not created until [`DataDir::create`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The path of one of its files.
    pub fn file(&self, file: DataFile) -> PathBuf {
        self.root.join(file.file_name())
    }

    /// Creates the directory (mode 0700) if it does not exist.
    pub fn create(&self) -> Result<(), DataDirError> {
        create_private_dir(&self.root)
    }

    /// Whether a file exists.
    pub fn exists(&self, file: DataFile) -> bool {
        self.file(file).exists()
    }

    /// Writes a secret file with mode 0600. Never overwrites: the file is created exclusively.
    pub(crate) fn write_secret(&self, file: DataFile, contents: &[u8]) -> Result<(), DataDirError> {
        write_new(&self.file(file), contents, 0o600)
    }

    /// Writes a public file (a certificate) with mode 0644. Never overwrites.
    pub(crate) fn write_public(&self, file: DataFile, contents: &[u8]) -> Result<(), DataDirError> {
        write_new(&self.file(file), contents, 0o644)
    }

    /// Reads a secret file, refusing one that group or others can read.
    pub(crate) fn read_secret(&self, file: DataFile) -> Result<Vec<u8>, DataDirError> {
        let path = self.file(file);
        check_owner_only(&path)?;
        fs::read(&path).map_err(|source| DataDirError::Io { path, source })
    }

    /// Reads a public file.
    pub fn read_public(&self, file: DataFile) -> Result<Vec<u8>, DataDirError> {
        let path = self.file(file);
        fs::read(&path).map_err(|source| DataDirError::Io { path, source })
    }
}

/// Writes a secret file at `path`, outside any data directory, with mode 0600. Never
/// overwrites.
pub(crate) fn write_new_secret(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    write_new(path, contents, 0o600)
}

/// Replaces the secret file at `path` (mode 0600) as one step: writes a new file beside it
/// and renames it over the old one, so a crash leaves the old file or the new, never half.
pub(crate) fn replace_secret(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    let fresh = path.with_file_name(name);
    match fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DataDirError::Io {
                path: fresh,
                source: e,
            })
        }
        _ => {}
    }
    write_new(&fresh, contents, 0o600)?;
    fs::rename(&fresh, path).map_err(|source| DataDirError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates the directory `path` (and its parents) with mode 0700.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), DataDirError> {
    fs::create_dir_all(path).map_err(|source| DataDirError::Io {
        path: path.to_owned(),
        source,
    })?;
    set_mode(path, 0o700)
}

/// Writes a new file at `path` with `mode`; never overwrites.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            DataDirError::Exists(path.to_owned())
        } else {
            io(e)
        }
    })?;
    // The umask may have cleared bits from `mode`, never added any; set it exactly.
    set_mode(path, mode)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| DataDirError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), DataDirError> {
    Ok(())
}

#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| DataDirError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path) -> Result<(), DataDirError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path().join("d"));
        dd.create().unwrap();
        dd.write_secret(DataFile::RootKey, b"k").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dd.file(DataFile::RootKey))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            dd.write_secret(DataFile::RootKey, b"other"),
            Err(DataDirError::Exists(_))
        ));
        assert_eq!(dd.read_secret(DataFile::RootKey).unwrap(), b"k");
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path());
        dd.write_secret(DataFile::IssuingKey, b"k").unwrap();
        fs::set_permissions(
            dd.file(DataFile::IssuingKey),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        assert!(matches!(
            dd.read_secret(DataFile::IssuingKey),
            Err(DataDirError::Permissions { .. })
        ));
    }
}
