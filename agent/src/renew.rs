//! Renewal, and the credentials built from an enrollment or renewal answer. A renewal
//! always brings a new key: the old one is never certified again.

use crate::client::ApiError;
use crate::credentials::{certificates, presented_chain, CertificateInfo};
use crate::lifecycle::{Agent, AgentError, Api, ClientIdentity};
use crate::state::{rfc3339, Enrolled, Identity};
use vouch_proto::enroll::{EnrollResponse, RenewRequest};
use vouch_proto::ProblemCode;

impl<A: Api> Agent<A> {
    /// Builds what is saved from an enrollment or renewal answer for `key_pem`.
    pub(crate) fn credentials(
        &self,
        resp: EnrollResponse,
        key_pem: String,
        ca_pem: &str,
        template: Option<&Identity>,
        tpm: bool,
    ) -> Result<Enrolled, AgentError> {
        let root_der = certificates(ca_pem).into_iter().next().unwrap_or_default();
        let cert_pem = presented_chain(&resp.certificate_pem, &resp.ca_chain_pem, &root_der);
        let certificate = CertificateInfo::from_pem(&cert_pem, "the issued certificate")?;
        if !certificate.matches_key(&key_pem) {
            return Err(AgentError::Api {
                what: "reading the issued certificate",
                source: ApiError::Protocol("the certificate is not for the device's key".into()),
            });
        }
        let ca_sha256 = crate::credentials::fingerprint(ca_pem).map(hex::encode)?;
        let identity = Identity {
            device_id: resp.device_id,
            spiffe_id: resp.spiffe_id,
            zone: resp.zone,
            serial: resp.serial,
            not_after: rfc3339(certificate.not_after),
            obtained_at: rfc3339(self.clock.now()),
            server: self.settings.server.clone(),
            ca_sha256,
            tpm,
            last_attestation: template.and_then(|t| t.last_attestation.clone()),
        };
        Ok(Enrolled {
            identity,
            key_pem,
            cert_pem,
            ca_pem: ca_pem.to_owned(),
            certificate,
        })
    }

    /// Renews the certificate with a new key.
    pub(crate) async fn renew(&self, enrolled: &Enrolled) -> Result<Enrolled, AgentError> {
        let key = crate::credentials::new_key()?;
        let req = RenewRequest {
            csr_pem: crate::credentials::csr_pem(&key)?,
        };
        let key_pem = key.serialize_pem();
        self.state.stage_next_key(&key_pem)?;
        let resp = match self.api.renew(&ClientIdentity::from(enrolled), &req).await {
            Ok(resp) => resp,
            Err(e)
                if matches!(
                    e.code(),
                    Some(ProblemCode::DeviceRevoked | ProblemCode::DeviceUnknown)
                ) =>
            {
                return Err(AgentError::RenewalRefused(e))
            }
            Err(e) => {
                return Err(AgentError::Api {
                    what: "renewal",
                    source: e,
                })
            }
        };
        let renewed = self.credentials(
            resp,
            key_pem,
            &enrolled.ca_pem,
            Some(&enrolled.identity),
            enrolled.identity.tpm,
        )?;
        self.state.save_renewal(&renewed)?;
        tracing::info!(serial = %renewed.identity.serial, not_after = %renewed.identity.not_after, "certificate renewed");
        Ok(renewed)
    }
}
