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
    /// What the running sidecar says on its socket (`<state-dir>/agent.sock`): `ok`, why
    /// it refuses every message, or that it does not answer.
    pub messaging: String,
}

/// Asks the sidecar's `GET /healthz` on the workload socket at `socket` (a plain HTTP/1.0
/// exchange, bounded in time and size).
fn sidecar_health(socket: &Path) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return "not running (no sidecar answers on its socket)".into();
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return "not answering".into();
    }
    let mut answer = Vec::new();
    let _ = stream.take(16 * 1024).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") {
        return "ok".into();
    }
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "not answering".into())
}

impl Status {
    /// Reads the status of the device whose state is in `dir`, as of `now`, and asks its
    /// sidecar on `socket` (default `<dir>/agent.sock`).
    pub fn read(
        dir: &Path,
        socket: Option<&Path>,
        now: OffsetDateTime,
    ) -> Result<Self, StatusError> {
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
            messaging: sidecar_health(&socket.map_or_else(
                || dir.join(crate::messaging::sidecar::SOCKET_FILE),
                Path::to_path_buf,
            )),
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
            "device:      {}\nspiffe id:   {}\nzone:        {}\nserver:      {}\nserial:      {}\nexpires:     {} ({expiry})\ntpm:         {}\nattestation: {attested}\nmessaging:   {}\n",
            id.device_id,
            id.spiffe_id,
            id.zone,
            id.server,
            id.serial,
            id.not_after,
            if id.tpm { "yes" } else { "no" },
            self.messaging,
        )
    }
}
