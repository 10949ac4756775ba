//! Remote attestation, every `--attest-every`: a challenge from the server, a quote of the
//! PCRs it names with the AK over its nonce, and the verdict, recorded in `identity.json`.

use crate::lifecycle::{Agent, AgentError, Api, ClientIdentity};
use crate::state::{rfc3339, Enrolled, LastAttestation, StateError};
use crate::tpm_helper::{HelperError, Reply, Request};
use time::OffsetDateTime;
use vouch_proto::attest::{AttestOutcome, QuoteSubmission};
use vouch_proto::ProblemCode;

impl<A: Api> Agent<A> {
    /// One attestation: challenge, quote, submit. Returns the verdict to record (a refusal
    /// or a TPM failure included); errors are the transient failures, to retry soon.
    pub(crate) async fn attest(&self, enrolled: &Enrolled) -> Result<Attested, AgentError> {
        let now = self.clock.now();
        let next = Some(now + self.settings.attest_every);
        let (result, reason, reference_set, next) = match self.quote_and_submit(enrolled).await {
            Ok(result) => {
                tracing::info!(result = %result.result, reference_set = ?result.reference_set, "attestation passed");
                (result.result, None, Some(result.reference_set), next)
            }
            Err(e) if e.is_transient() || e.code() == Some(ProblemCode::NonceInvalid) => {
                return Err(e)
            }
            Err(e) => {
                tracing::error!(error = %e, "attestation did not pass");
                let (result, next) = match e.code() {
                    Some(ProblemCode::AttestationFailed) => ("fail", next),
                    // The server holds no AK for this device: attesting again cannot help.
                    Some(ProblemCode::NoAttestationKey) => ("error", None),
                    _ => ("error", next),
                };
                (result.to_owned(), Some(e.to_string()), None, next)
            }
        };
        Ok(Attested {
            failure: reason.clone(),
            record: LastAttestation {
                at: rfc3339(now),
                result,
                reason,
                reference_set,
            },
            next,
        })
    }

    async fn quote_and_submit(&self, enrolled: &Enrolled) -> Result<AttestOutcome, AgentError> {
        let tcti = self.settings.tpm.clone().unwrap_or_default();
        let identity = ClientIdentity::from(enrolled);
        let challenge = self
            .api
            .attest_challenge(&identity)
            .await
            .map_err(AgentError::api("attestation challenge"))?;
        if challenge.hash != "sha256" {
            return Err(AgentError::Unsupported(format!(
                "the server asks for the `{}` PCR bank; only sha256 is quoted",
                challenge.hash
            )));
        }
        let ak = self.state.ak()?.ok_or_else(|| StateError::Damaged {
            path: self.state.file(crate::state::AK),
            reason: "missing, but the device enrolled with a TPM".into(),
        })?;
        let nonce = challenge.nonce_bytes().map_err(|e| AgentError::Api {
            what: "attestation challenge",
            source: crate::client::ApiError::Protocol(format!("nonce is not hex: {e}")),
        })?;
        let request = Request::Quote {
            ak,
            nonce: nonce.clone(),
            pcrs: challenge.pcrs.clone(),
        };
        let quoted = match self.settings.tpm_call(&tcti, request).await? {
            Reply::Quoted(quoted) => quoted,
            _ => return Err(HelperError::Mismatch.into()),
        };
        // Read after the quote: the log then holds at least what the quoted PCRs measured.
        let event_log = match &self.settings.event_log {
            Some(path) => Some(read_event_log(path).await?),
            None => None,
        };
        let req = QuoteSubmission::new(
            &nonce,
            &quoted.attest,
            &quoted.signature,
            &quoted.pcr_values,
            event_log.as_deref(),
        );
        self.api
            .attest_quote(&identity, &req)
            .await
            .map_err(AgentError::api("attestation"))
    }
}

/// Largest event log sent (the server takes up to 512 KiB).
pub const MAX_EVENT_LOG_BYTES: u64 = 512 * 1024;

/// Reads the event log at `path`, at most [`MAX_EVENT_LOG_BYTES`] (securityfs reports a
/// size of 0 for the live log, so the read itself is bounded).
async fn read_event_log(path: &std::path::Path) -> Result<Vec<u8>, AgentError> {
    use tokio::io::AsyncReadExt;
    let failed = |reason: String| AgentError::EventLog {
        path: path.to_owned(),
        reason,
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_EVENT_LOG_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > MAX_EVENT_LOG_BYTES {
        return Err(failed(format!("larger than {MAX_EVENT_LOG_BYTES} bytes")));
    }
    Ok(bytes)
}

/// An attestation's verdict, to record.
pub(crate) struct Attested {
    /// What `identity.json` keeps of it.
    pub(crate) record: LastAttestation,
    /// When to attest next (`None`: never).
    pub(crate) next: Option<OffsetDateTime>,
    /// Why it did not pass.
    pub(crate) failure: Option<String>,
}
