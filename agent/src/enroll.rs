//! First enrollment, with or without the TPM (`docs/agent-protocol.md`).
//!
//! Without a TPM: a fresh key and its CSR with the join token; the device is `low` trust.
//! With a TPM: the EK (and its certificate, if any) and a new AK go to `/v1/enroll/tpm`; the
//! TPM activates the credential the server wrapped for that AK under that EK, and the secret
//! it recovers goes with the CSR to `/v1/enroll`. Nothing is saved until the server has
//! issued the certificate; `identity.json` is saved last.

use crate::credentials::{csr_pem, new_key};
use crate::lifecycle::{Agent, AgentError, Api, Retry};
use crate::state::Enrolled;
use crate::tpm::AkBlobs;
use crate::tpm_helper::{HelperError, Reply, Request};
use vouch_proto::encoding::base64;
use vouch_proto::enroll::{EnrollRequest, TpmEnrollStart, TpmProof};

impl<A: Api> Agent<A> {
    /// Enrolls with `token`, trusting `ca_pem` (already pinned), and saves the result.
    /// Transient failures are retried (a few times in `--once` mode); a refusal is final.
    pub async fn enroll(&self, token: &str, ca_pem: &str) -> Result<Enrolled, AgentError> {
        let retry = Retry::new(&self.settings);
        let (enrolled, ak) = retry
            .run(self.rng.as_ref(), "enrollment", || {
                self.enroll_once(token, ca_pem)
            })
            .await?;
        if let Some(ak) = &ak {
            self.state.save_ak(ak)?;
        }
        self.state.save_enrollment(&enrolled)?;
        tracing::info!(device_id = %enrolled.identity.device_id, spiffe_id = %enrolled.identity.spiffe_id,
            zone = %enrolled.identity.zone, tpm = enrolled.identity.tpm,
            not_after = %enrolled.identity.not_after, "enrolled");
        Ok(enrolled)
    }

    /// One enrollment attempt; returns the credentials and, with a TPM, the AK.
    async fn enroll_once(
        &self,
        token: &str,
        ca_pem: &str,
    ) -> Result<(Enrolled, Option<AkBlobs>), AgentError> {
        let key = new_key()?;
        let csr = csr_pem(&key)?;
        // A second key, for key agreement only: messages to this device are encrypted to it.
        let ka_key = new_key()?;
        let ka_csr = csr_pem(&ka_key)?;
        let (tpm, ak) = match &self.settings.tpm {
            None => (None, None),
            Some(tcti) => {
                let (activation, ak) = self.activate(tcti, token).await?;
                (Some(activation), Some(ak))
            }
        };
        let with_tpm = tpm.is_some();
        let req = EnrollRequest {
            token: token.to_owned(),
            csr_pem: Some(csr),
            generate_key: None,
            tpm,
            key_agreement_csr_pem: Some(ka_csr),
            advertise: self.settings.advertise.clone(),
        };
        let resp = self
            .api
            .enroll(&req)
            .await
            .map_err(refused_unless_transient)?;
        let keys = (key.serialize_pem(), Some(ka_key.serialize_pem()));
        let enrolled = self.credentials(resp, keys, ca_pem, None, with_tpm)?;
        Ok((enrolled, ak))
    }

    /// Steps 1 and 2 of TPM enrollment: a new AK, the server's credential for it, and the
    /// TPM's activation of that credential.
    async fn activate(&self, tcti: &str, token: &str) -> Result<(TpmProof, AkBlobs), AgentError> {
        let (endorsement, ak) = match self.settings.tpm_call(tcti, Request::CreateAk).await? {
            Reply::CreatedAk { endorsement, ak } => (endorsement, ak),
            _ => return Err(HelperError::Mismatch.into()),
        };
        tracing::info!(
            ek_certificate = endorsement.certificate.is_some(),
            "created the attestation key; asking the server for a credential"
        );
        let req = TpmEnrollStart {
            token: token.to_owned(),
            ek_public: base64(&endorsement.public),
            ek_certificate: endorsement.certificate.as_deref().map(base64),
            ak_public: base64(&ak.public),
        };
        let challenge = self
            .api
            .enroll_tpm(&req)
            .await
            .map_err(refused_unless_transient)?;
        let (id_object, encrypted_secret) =
            challenge.credential().map_err(|e| AgentError::Api {
                what: "TPM enrollment",
                source: crate::client::ApiError::Protocol(format!("credential is not base64: {e}")),
            })?;
        let request = Request::Activate {
            ak: ak.clone(),
            id_object,
            encrypted_secret,
        };
        let secret = match self.settings.tpm_call(tcti, request).await? {
            Reply::Activated { secret } => secret,
            _ => return Err(HelperError::Mismatch.into()),
        };
        Ok((
            TpmProof {
                activation_id: challenge.activation_id,
                secret: base64(&secret),
            },
            ak,
        ))
    }
}

/// A transient failure stays retryable; any other answer refuses the enrollment.
fn refused_unless_transient(e: crate::client::ApiError) -> AgentError {
    if e.is_transient() {
        AgentError::Api {
            what: "enrollment",
            source: e,
        }
    } else {
        AgentError::EnrollmentRefused(e)
    }
}
