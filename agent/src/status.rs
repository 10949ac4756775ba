//! `vouch-agent status`: what the state directory says about the device, read without
//! changing anything.

use crate::credentials::CertificateInfo;
use crate::state::{rfc3339, Identity, StateDir, StateError, CERT};
use serde::Serialize;
use std::path::Path;
use time::OffsetDateTime;

/// Why the status cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The directory cannot be read or a file is damaged.
    #[error(transparent)]
    State(#[from] StateError),
    /// No state directory or no `identity.json` in it.
    #[error("the device is not enrolled (no identity.json in `{0}`)")]
    NotEnrolled(String),
}

/// The status report.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `identity.json`.
    #[serde(flatten)]
    pub identity: Identity,
    /// Whether the certificate has expired.
    pub expired: bool,
    /// Seconds until the certificate expires (negative once expired).
    pub expires_in_seconds: i64,
}

impl Status {
    /// Reads the status of the device whose state is in `dir`, as of `now`.
    pub fn read(dir: &Path, now: OffsetDateTime) -> Result<Self, StatusError> {
        if !dir.exists() {
            return Err(StatusError::NotEnrolled(dir.display().to_string()));
        }
        let state = StateDir::existing(dir)?;
        let mut identity = state
            .identity()?
            .ok_or_else(|| StatusError::NotEnrolled(dir.display().to_string()))?;
        // The certificate is the truth about expiry (identity.json may lag a renewal).
        if let Some(pem_text) = state.read(CERT)? {
            if let Ok(cert) = CertificateInfo::from_pem(&pem_text, "cert.pem") {
                identity.not_after = rfc3339(cert.not_after);
            }
        }
        let not_after = crate::state::parse_rfc3339(&identity.not_after).unwrap_or(now);
        let left = (not_after - now).whole_seconds();
        Ok(Self {
            identity,
            expired: left <= 0,
            expires_in_seconds: left,
        })
    }

    /// The report as text, one `name: value` line each.
    pub fn text(&self) -> String {
        let id = &self.identity;
        let expiry = if self.expired {
            "EXPIRED".to_owned()
        } else {
            let left = std::time::Duration::from_secs(self.expires_in_seconds.unsigned_abs());
            format!("in {}", humantime::format_duration(left))
        };
        let attested = match &id.last_attestation {
            None if id.tpm => "never".to_owned(),
            None => "no (enrolled without a TPM)".to_owned(),
            Some(a) => {
                let mut line = format!("{} at {}", a.result, a.at);
                if let Some(set) = &a.reference_set {
                    line.push_str(&format!(" (reference set `{set}`)"));
                }
                if let Some(reason) = &a.reason {
                    line.push_str(&format!(": {reason}"));
                }
                line
            }
        };
        format!(
            "device:      {}\nspiffe id:   {}\nzone:        {}\nserver:      {}\nserial:      {}\nexpires:     {} ({expiry})\ntpm:         {}\nattestation: {attested}\n",
            id.device_id,
            id.spiffe_id,
            id.zone,
            id.server,
            id.serial,
            id.not_after,
            if id.tpm { "yes" } else { "no" },
        )
    }
}
