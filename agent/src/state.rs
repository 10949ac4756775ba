//! The state directory: everything the device keeps between runs.
//!
//! | file            | holds                                                  | mode |
//! |-----------------|--------------------------------------------------------|------|
//! | `identity.json` | device id, SPIFFE ID, zone, serial, expiry, server, pin, last attestation | 0600 |
//! | `key.pem`       | the device's P-256 private key (PKCS#8)                | 0600 |
//! | `cert.pem`      | its certificate and the issuing CA                     | 0600 |
//! | `ca.pem`        | the pinned root CA                                     | 0600 |
//! | `ak.json`       | the TPM attestation key's blobs (TPM-wrapped)          | 0600 |
//!
//! The directory is 0700. Every write goes to a temporary file in the same directory, is
//! synced, then renamed over the old file, and the directory is synced: a crash leaves the
//! old file or the new one, never half of either. `identity.json` is written last at
//! enrollment: the device is enrolled exactly when it exists.
//!
//! A renewal replaces two files (key and certificate), which no rename makes atomic
//! together. The new key is first written as `key.pem.next`; the certificate is replaced;
//! then the key is renamed into place. [`StateDir::load`] finishes an interrupted
//! renewal by matching the certificate with `key.pem` or `key.pem.next`.

use crate::credentials::CertificateInfo;
use crate::tpm::AkBlobs;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `identity.json`.
pub const IDENTITY: &str = "identity.json";
/// `key.pem`.
pub const KEY: &str = "key.pem";
/// The next key, during a renewal.
pub const NEXT_KEY: &str = "key.pem.next";
/// `cert.pem`.
pub const CERT: &str = "cert.pem";
/// `ca.pem`.
pub const CA: &str = "ca.pem";
/// `ak.json`.
pub const AK: &str = "ak.json";
/// The key-agreement key (ECDH P-256; messages to this device are encrypted to it), 0600.
pub const KA_KEY: &str = "ka-key.pem";
/// The key-agreement key a renewal in progress asked a certificate for.
pub const NEXT_KA_KEY: &str = "ka-key.pem.next";
/// The key-agreement certificate.
pub const KA_CERT: &str = "ka-cert.pem";
/// Mode of every file.
const FILE_MODE: u32 = 0o600;
/// Mode of the directory.
const DIR_MODE: u32 = 0o700;

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file system operation failed.
    #[error("state directory `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("state file `{path}` is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The result of the last attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAttestation {
    /// When, RFC 3339.
    pub at: String,
    /// `pass`, `fail` (the server refused the quote) or `error` (no verdict).
    pub result: String,
    /// Why it did not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reference set a passing quote matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_set: Option<String>,
}

/// `identity.json`: who this device is and where it enrolled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The registry's device id.
    pub device_id: String,
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// The zone.
    pub zone: String,
    /// Serial of the current certificate, hex.
    pub serial: String,
    /// Expiry of the current certificate, RFC 3339.
    pub not_after: String,
    /// When the current certificate was received, RFC 3339 (renewal is timed from it).
    pub obtained_at: String,
    /// The server's URL.
    pub server: String,
    /// SHA-256 (hex) of the pinned root CA.
    pub ca_sha256: String,
    /// Whether the device enrolled with its TPM (and so attests).
    pub tpm: bool,
    /// The last attestation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attestation: Option<LastAttestation>,
}

/// An enrolled device's credentials, as loaded.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// `identity.json`.
    pub identity: Identity,
    /// `key.pem`.
    pub key_pem: String,
    /// `cert.pem`.
    pub cert_pem: String,
    /// `ca.pem`.
    pub ca_pem: String,
    /// The certificate, parsed.
    pub certificate: CertificateInfo,
    /// The key-agreement key and certificate, if the server issued one.
    pub key_agreement: Option<KeyAgreement>,
}

/// The key-agreement key and its certificate (`ka-key.pem`, `ka-cert.pem`).
#[derive(Debug, Clone)]
pub struct KeyAgreement {
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, parsed.
    pub certificate: CertificateInfo,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, creating it (mode 0700) if needed, and tightens its mode to 0700.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(io)?;
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Opens an existing directory without creating or changing anything.
    pub fn existing(path: &Path) -> Result<Self, StateError> {
        fs::metadata(path).map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Replaces `name` with `contents` atomically (mode 0600).
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<(), StateError> {
        let target = self.file(name);
        let io = |source| StateError::Io {
            path: target.clone(),
            source,
        };
        // NamedTempFile creates the file 0600 with a random name in the same directory.
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.path)
            .map_err(io)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(io)?;
        tmp.write_all(contents).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&target).map_err(|e| io(e.error))?;
        self.sync_dir()
    }

    /// Renames `from` to `to` in the directory, atomically.
    fn rename(&self, from: &str, to: &str) -> Result<(), StateError> {
        fs::rename(self.file(from), self.file(to)).map_err(|source| StateError::Io {
            path: self.file(to),
            source,
        })?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads `name`; `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        match fs::read_to_string(self.file(name)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: self.file(name),
                source,
            }),
        }
    }

    /// Reads `name` as bytes; `None` if it does not exist.
    pub fn read_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        match fs::read(self.file(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: self.file(name),
                source,
            }),
        }
    }

    fn damaged(&self, name: &str, reason: impl Into<String>) -> StateError {
        StateError::Damaged {
            path: self.file(name),
            reason: reason.into(),
        }
    }

    fn required(&self, name: &str) -> Result<String, StateError> {
        self.read(name)?
            .ok_or_else(|| self.damaged(name, "missing, but identity.json exists"))
    }

    /// Reads `identity.json` alone; `None` if the device has not enrolled.
    pub fn identity(&self) -> Result<Option<Identity>, StateError> {
        self.read(IDENTITY)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| self.damaged(IDENTITY, e.to_string()))
            })
            .transpose()
    }

    /// Writes `identity.json`.
    pub fn save_identity(&self, identity: &Identity) -> Result<(), StateError> {
        let text = serde_json::to_vec_pretty(identity)
            .map_err(|e| self.damaged(IDENTITY, e.to_string()))?;
        self.write(IDENTITY, &text)
    }

    /// Loads the enrolled device, finishing a renewal a crash interrupted; `None` if the
    /// device has not enrolled.
    pub fn load(&self) -> Result<Option<Enrolled>, StateError> {
        let Some(mut identity) = self.identity()? else {
            return Ok(None);
        };
        let cert_pem = self.required(CERT)?;
        let ca_pem = self.required(CA)?;
        let certificate = CertificateInfo::from_pem(&cert_pem, "cert.pem")
            .map_err(|e| self.damaged(CERT, e.to_string()))?;
        let mut key_pem = self.required(KEY)?;
        if !certificate.matches_key(&key_pem) {
            match self.read(NEXT_KEY)? {
                Some(next) if certificate.matches_key(&next) => {
                    self.rename(NEXT_KEY, KEY)?;
                    key_pem = next;
                }
                _ => return Err(self.damaged(KEY, "it is not the key of cert.pem")),
            }
        }
        // identity.json is written after cert.pem: bring it up to date with the certificate.
        let not_after = rfc3339(certificate.not_after);
        if identity.not_after != not_after {
            identity.serial = certificate.serial.clone();
            identity.not_after = not_after;
            identity.obtained_at = rfc3339(certificate.not_before);
            self.save_identity(&identity)?;
        }
        let key_agreement = self.load_key_agreement()?;
        Ok(Some(Enrolled {
            identity,
            key_pem,
            cert_pem,
            ca_pem,
            certificate,
            key_agreement,
        }))
    }

    /// The key-agreement key and certificate, if any, finishing a renewal a crash
    /// interrupted (the certificate is written before its key is moved into place).
    fn load_key_agreement(&self) -> Result<Option<KeyAgreement>, StateError> {
        let Some(cert_pem) = self.read(KA_CERT)? else {
            return Ok(None);
        };
        let certificate = CertificateInfo::from_pem(&cert_pem, "ka-cert.pem")
            .map_err(|e| self.damaged(KA_CERT, e.to_string()))?;
        let mut key_pem = self.required(KA_KEY)?;
        if !certificate.matches_key(&key_pem) {
            match self.read(NEXT_KA_KEY)? {
                Some(next) if certificate.matches_key(&next) => {
                    self.rename(NEXT_KA_KEY, KA_KEY)?;
                    key_pem = next;
                }
                _ => return Err(self.damaged(KA_KEY, "it is not the key of ka-cert.pem")),
            }
        }
        Ok(Some(KeyAgreement {
            key_pem,
            cert_pem,
            certificate,
        }))
    }

    /// Saves a first enrollment. `identity.json` goes last: until it is written, the device
    /// is not enrolled.
    pub fn save_enrollment(&self, enrolled: &Enrolled) -> Result<(), StateError> {
        self.write(CA, enrolled.ca_pem.as_bytes())?;
        self.write(KEY, enrolled.key_pem.as_bytes())?;
        self.write(CERT, enrolled.cert_pem.as_bytes())?;
        if let Some(ka) = &enrolled.key_agreement {
            self.write(KA_KEY, ka.key_pem.as_bytes())?;
            self.write(KA_CERT, ka.cert_pem.as_bytes())?;
        }
        self.save_identity(&enrolled.identity)
    }

    /// Step 1 of a renewal: keeps the new keys beside the current ones.
    pub fn stage_next_key(
        &self,
        key_pem: &str,
        ka_key_pem: Option<&str>,
    ) -> Result<(), StateError> {
        if let Some(ka) = ka_key_pem {
            self.write(NEXT_KA_KEY, ka.as_bytes())?;
        }
        self.write(NEXT_KEY, key_pem.as_bytes())
    }

    /// Step 2 of a renewal: each new certificate, then its key, then the identity. A crash
    /// between any two steps leaves each certificate beside a key that `load` matches to it.
    pub fn save_renewal(&self, enrolled: &Enrolled) -> Result<(), StateError> {
        if let Some(ka) = &enrolled.key_agreement {
            self.write(KA_CERT, ka.cert_pem.as_bytes())?;
            if self.read(NEXT_KA_KEY)?.is_some() {
                self.rename(NEXT_KA_KEY, KA_KEY)?;
            }
        }
        self.write(CERT, enrolled.cert_pem.as_bytes())?;
        self.rename(NEXT_KEY, KEY)?;
        self.save_identity(&enrolled.identity)
    }

    /// The TPM attestation key's blobs, if saved.
    pub fn ak(&self) -> Result<Option<AkBlobs>, StateError> {
        self.read(AK)?
            .map(|text| serde_json::from_str(&text).map_err(|e| self.damaged(AK, e.to_string())))
            .transpose()
    }

    /// Saves the attestation key's blobs.
    pub fn save_ak(&self, blobs: &AkBlobs) -> Result<(), StateError> {
        let text = serde_json::to_vec(blobs).map_err(|e| self.damaged(AK, e.to_string()))?;
        self.write(AK, &text)
    }
}

/// RFC 3339 text of `t` (UTC).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    use time::format_description::well_known::Rfc3339;
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Parses RFC 3339 text.
pub fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::new_key;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn certificate(key: &rcgen::KeyPair, days: i64) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["device".into()]).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        params.self_signed(key).unwrap().pem()
    }

    fn key_agreement(days: i64) -> KeyAgreement {
        let key = new_key().unwrap();
        let cert_pem = certificate(&key, days);
        KeyAgreement {
            key_pem: key.serialize_pem(),
            certificate: CertificateInfo::from_pem(&cert_pem, "test").unwrap(),
            cert_pem,
        }
    }

    fn enrolled(days: i64) -> Enrolled {
        let key = new_key().unwrap();
        let cert_pem = certificate(&key, days);
        let certificate = CertificateInfo::from_pem(&cert_pem, "test").unwrap();
        Enrolled {
            identity: Identity {
                device_id: "dev-1".into(),
                spiffe_id: "spiffe://fleet.example/device/dev-1".into(),
                zone: "lab".into(),
                serial: certificate.serial.clone(),
                not_after: rfc3339(certificate.not_after),
                obtained_at: rfc3339(time::OffsetDateTime::now_utc()),
                server: "https://127.0.0.1:8443".into(),
                ca_sha256: "00".repeat(32),
                tpm: false,
                last_attestation: None,
            },
            key_pem: key.serialize_pem(),
            ca_pem: cert_pem.clone(),
            cert_pem,
            key_agreement: Some(key_agreement(days)),
            certificate,
        }
    }

    fn no_temporaries(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(
                !name.to_string_lossy().starts_with(".tmp-"),
                "{name:?} left behind"
            );
        }
    }

    #[test]
    fn the_directory_is_0700_and_files_0600() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("a/state");
        let dir = StateDir::open(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
        dir.save_enrollment(&enrolled(1)).unwrap();
        dir.save_ak(&AkBlobs {
            private: vec![1],
            public: vec![2],
        })
        .unwrap();
        for name in [IDENTITY, KEY, CERT, CA, AK] {
            assert_eq!(mode(&dir.file(name)), 0o600, "{name}");
        }
        // An existing directory with a loose mode is tightened.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
        no_temporaries(&path);
    }

    #[test]
    fn state_round_trips() {
        let base = tempfile::tempdir().unwrap();
        let dir = StateDir::open(base.path()).unwrap();
        assert!(dir.load().unwrap().is_none());
        assert!(dir.ak().unwrap().is_none());
        let mut e = enrolled(1);
        e.identity.tpm = true;
        e.identity.last_attestation = Some(LastAttestation {
            at: "2030-01-01T00:00:00Z".into(),
            result: "pass".into(),
            reason: None,
            reference_set: Some("v1".into()),
        });
        dir.save_enrollment(&e).unwrap();
        let loaded = dir.load().unwrap().unwrap();
        assert_eq!(loaded.identity, e.identity);
        assert_eq!(loaded.key_pem, e.key_pem);
        assert_eq!(loaded.certificate, e.certificate);
        let blobs = AkBlobs {
            private: vec![1, 2],
            public: vec![3],
        };
        dir.save_ak(&blobs).unwrap();
        assert_eq!(dir.ak().unwrap(), Some(blobs));
    }

    #[test]
    fn writes_are_atomic_for_readers() {
        let base = tempfile::tempdir().unwrap();
        let dir = StateDir::open(base.path()).unwrap();
        let a = vec![b'a'; 256 * 1024];
        let b = vec![b'b'; 256 * 1024];
        dir.write("big", &a).unwrap();
        let writer = {
            let dir = dir.clone();
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                for i in 0..40 {
                    dir.write("big", if i % 2 == 0 { &b } else { &a }).unwrap();
                }
            })
        };
        for _ in 0..200 {
            let seen = fs::read(dir.file("big")).unwrap();
            assert!(seen == a || seen == b, "a reader saw a half-written file");
        }
        writer.join().unwrap();
        no_temporaries(dir.path());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let base = tempfile::tempdir().unwrap();
        let dir = StateDir::open(base.path()).unwrap();
        dir.write("f", b"old").unwrap();
        fs::create_dir(dir.file("g")).unwrap();
        fs::write(dir.file("g/x"), b"").unwrap();
        // Renaming a file over a non-empty directory fails: nothing changes.
        assert!(dir.write("g", b"new").is_err());
        assert_eq!(fs::read(dir.file("f")).unwrap(), b"old");
        no_temporaries(dir.path());
    }

    #[test]
    fn an_interrupted_renewal_is_finished_on_load() {
        let base = tempfile::tempdir().unwrap();
        let dir = StateDir::open(base.path()).unwrap();
        let first = enrolled(1);
        dir.save_enrollment(&first).unwrap();
        // The renewal staged its key and wrote the certificate, then the process died.
        let key = new_key().unwrap();
        dir.stage_next_key(&key.serialize_pem(), None).unwrap();
        let renewed = certificate(&key, 2);
        dir.write(CERT, renewed.as_bytes()).unwrap();
        let loaded = dir.load().unwrap().unwrap();
        assert_eq!(loaded.key_pem, key.serialize_pem());
        assert!(dir.read(NEXT_KEY).unwrap().is_none());
        assert_ne!(loaded.identity.not_after, first.identity.not_after);
        assert_eq!(dir.identity().unwrap().unwrap(), loaded.identity);
        // A key that fits nothing is damage, not a guess.
        dir.write(KEY, new_key().unwrap().serialize_pem().as_bytes())
            .unwrap();
        assert!(matches!(dir.load(), Err(StateError::Damaged { .. })));
    }

    #[test]
    fn key_agreement_credentials_survive_a_crash_at_every_step_of_a_renewal() {
        let base = tempfile::tempdir().unwrap();
        let dir = StateDir::open(base.path()).unwrap();
        let first = enrolled(1);
        dir.save_enrollment(&first).unwrap();
        let loaded = dir.load().unwrap().unwrap();
        let ka = loaded.key_agreement.unwrap();
        assert_eq!(ka.key_pem, first.key_agreement.as_ref().unwrap().key_pem);
        assert_eq!(mode(&dir.file(KA_KEY)), 0o600);
        // Staged, and the new key-agreement certificate written: the staged key is taken.
        let next = key_agreement(2);
        dir.stage_next_key(&new_key().unwrap().serialize_pem(), Some(&next.key_pem))
            .unwrap();
        let loaded = dir.load().unwrap().unwrap();
        assert_eq!(
            loaded.key_agreement.unwrap().key_pem,
            ka.key_pem,
            "only staged"
        );
        dir.write(KA_CERT, next.cert_pem.as_bytes()).unwrap();
        let loaded = dir.load().unwrap().unwrap();
        assert_eq!(loaded.key_agreement.unwrap().key_pem, next.key_pem);
        assert!(dir.read(NEXT_KA_KEY).unwrap().is_none());
        // A key-agreement key that fits nothing is damage.
        dir.write(KA_KEY, new_key().unwrap().serialize_pem().as_bytes())
            .unwrap();
        assert!(matches!(dir.load(), Err(StateError::Damaged { .. })));
    }

    #[test]
    fn damaged_files_are_reported() {
        let base = tempfile::tempdir().unwrap();
        let dir = StateDir::open(base.path()).unwrap();
        dir.write(IDENTITY, b"{").unwrap();
        assert!(matches!(dir.load(), Err(StateError::Damaged { .. })));
        dir.save_identity(&enrolled(1).identity).unwrap();
        let err = dir.load().unwrap_err().to_string();
        assert!(err.contains("cert.pem"), "{err}");
        dir.write(AK, b"[]").unwrap();
        assert!(dir.ak().is_err());
    }
}
