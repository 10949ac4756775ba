//! Renewal, and the credentials built from an enrollment or renewal answer. A renewal
//! always brings a new key: the old one is never certified again.

use crate::client::ApiError;
use crate::credentials::{certificates, presented_chain, CertificateInfo};
use crate::lifecycle::{Agent, AgentError, Api, ClientIdentity};
use crate::state::{rfc3339, Enrolled, Identity, KeyAgreement};
use vouch_proto::enroll::{EnrollResponse, RenewRequest};
use vouch_proto::ProblemCode;

impl<A: Api> Agent<A> {
    /// Builds what is saved from an enrollment or renewal answer for `key_pem` (and
    /// `ka_key_pem`, the key-agreement key the request asked a certificate for). A renewal
    /// (`previous`: the credentials it renews) keeps the last attestation, and its
    /// key-agreement certificate if answered without one (an older server).
    pub(crate) fn credentials(
        &self,
        resp: EnrollResponse,
        (key_pem, ka_key_pem): (String, Option<String>),
        ca_pem: &str,
        previous: Option<&Enrolled>,
        tpm: bool,
    ) -> Result<Enrolled, AgentError> {
        let kept = previous.and_then(|p| p.key_agreement.as_ref());
        let root_der = certificates(ca_pem).into_iter().next().unwrap_or_default();
        let cert_pem = presented_chain(&resp.certificate_pem, &resp.ca_chain_pem, &root_der);
        let certificate = CertificateInfo::from_pem(&cert_pem, "the issued certificate")?;
        if !certificate.matches_key(&key_pem) {
            return Err(AgentError::Api {
                what: "reading the issued certificate",
                source: ApiError::Protocol("the certificate is not for the device's key".into()),
            });
        }
        let key_agreement = match (resp.key_agreement_certificate_pem, ka_key_pem) {
            (Some(ka_pem), Some(ka_key_pem)) => {
                let ka_cert_pem = presented_chain(&ka_pem, &resp.ca_chain_pem, &root_der);
                let certificate =
                    CertificateInfo::from_pem(&ka_cert_pem, "the key-agreement certificate")?;
                if !certificate.matches_key(&ka_key_pem) {
                    return Err(AgentError::Api {
                        what: "reading the key-agreement certificate",
                        source: ApiError::Protocol(
                            "the key-agreement certificate is not for the device's key-agreement key"
                                .into(),
                        ),
                    });
                }
                Some(KeyAgreement {
                    key_pem: ka_key_pem,
                    cert_pem: ka_cert_pem,
                    certificate,
                })
            }
            (None, Some(_)) => {
                tracing::warn!("the server issued no key-agreement certificate: this device cannot receive messages");
                kept.cloned()
            }
            _ => kept.cloned(),
        };
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
            last_attestation: previous.and_then(|p| p.identity.last_attestation.clone()),
        };
        Ok(Enrolled {
            identity,
            key_pem,
            cert_pem,
            ca_pem: ca_pem.to_owned(),
            certificate,
            key_agreement,
        })
    }

    /// Renews the certificate with a new key.
    pub(crate) async fn renew(&self, enrolled: &Enrolled) -> Result<Enrolled, AgentError> {
        let key = crate::credentials::new_key()?;
        let ka_key = crate::credentials::new_key()?;
        let req = RenewRequest {
            csr_pem: crate::credentials::csr_pem(&key)?,
            key_agreement_csr_pem: Some(crate::credentials::csr_pem(&ka_key)?),
            advertise: self.settings.advertise.clone(),
        };
        let key_pem = key.serialize_pem();
        let ka_key_pem = ka_key.serialize_pem();
        self.state.stage_next_key(&key_pem, Some(&ka_key_pem))?;
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
            (key_pem, Some(ka_key_pem)),
            &enrolled.ca_pem,
            Some(enrolled),
            enrolled.identity.tpm,
        )?;
        self.state.save_renewal(&renewed)?;
        tracing::info!(serial = %renewed.identity.serial, not_after = %renewed.identity.not_after, "certificate renewed");
        Ok(renewed)
    }
}
