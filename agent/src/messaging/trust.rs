//! Who a peer is: its device certificate must chain through this fleet's issuing CA to the
//! pinned root (not merely to the root, which another CA may share), name a device of this
//! trust domain, and be for signing; its key-agreement certificate must come from the same
//! issuing CA, name the same SPIFFE ID, and be for key agreement only. A peer is identified by
//! issuing CA, serial and SPIFFE ID together, as the server identifies a caller.
//!
//! Plain functions of certificates and a time; no I/O.

use rustls_pki_types::{CertificateDer, UnixTime};
use vouch_envelope::certificate_sha256;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest certificate considered, bytes.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;

/// Why a peer's certificate is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The certificate does not parse, or is too large.
    #[error("the certificate does not parse: {0}")]
    Malformed(String),
    /// It does not chain through this fleet's issuing CA to the pinned root, or is not valid
    /// now.
    #[error("the certificate does not chain to this fleet's issuing CA: {0}")]
    Untrusted(String),
    /// Its SPIFFE ID is not a device of this trust domain.
    #[error("the certificate names no device of trust domain `{0}`")]
    NotADevice(String),
    /// Its key usage is not the one its role needs.
    #[error("the certificate's key usage is wrong for its role: {0}")]
    WrongUsage(&'static str),
    /// The key-agreement certificate names another identity than the device certificate.
    #[error("the key-agreement certificate is not the sender's")]
    NotTheSendersKey,
}

/// A device certificate that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDevice {
    /// The device id (from the SPIFFE ID).
    pub device_id: String,
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// The serial, as the certificate encodes it.
    pub serial: Vec<u8>,
    /// The public key (SEC1 point) that verifies its signatures.
    pub public_key: Vec<u8>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the certificate (its `x5t`).
    pub x5t: [u8; 32],
}

/// A key-agreement certificate that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKeyAgreement {
    /// The serial, as the certificate encodes it.
    pub serial: Vec<u8>,
    /// The ECDH P-256 public key, SEC1 uncompressed.
    pub public_key: Vec<u8>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// What peers are checked against: the pinned root, this fleet's issuing CA and the trust
/// domain.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    root: Vec<u8>,
    issuing_ca: Vec<u8>,
    trust_domain: String,
}

impl TrustAnchors {
    /// From the CA chain the server answers with (issuing CA, then root; PEM) and the trust
    /// domain. The root must be `pinned_root` (DER), the one the agent pinned at enrollment.
    pub fn new(
        chain_pem: &str,
        pinned_root: &[u8],
        trust_domain: &str,
    ) -> Result<Self, TrustError> {
        let chain = crate::credentials::certificates(chain_pem);
        let issuing_ca = chain
            .iter()
            .find(|der| der.as_slice() != pinned_root)
            .cloned()
            .ok_or_else(|| TrustError::Malformed("the CA chain has no issuing CA".into()))?;
        let anchors = Self {
            root: pinned_root.to_vec(),
            issuing_ca,
            trust_domain: trust_domain.to_owned(),
        };
        // The issuing CA itself must chain to the pinned root.
        let (_, issuing) = parse(&anchors.issuing_ca)?;
        let (_, root) = parse(&anchors.root)?;
        issuing
            .verify_signature(Some(root.public_key()))
            .map_err(|_| {
                TrustError::Untrusted("the issuing CA is not signed by the root".into())
            })?;
        Ok(anchors)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Checks a peer's device certificate at `now` (Unix seconds).
    pub fn verify_device(&self, der: &[u8], now: i64) -> Result<VerifiedDevice, TrustError> {
        self.verify_chain(der, now)?;
        let (_, cert) = parse(der)?;
        let spiffe_id = single_uri(&cert)?;
        let device_id = spiffe_id
            .strip_prefix(&format!("spiffe://{}/device/", self.trust_domain))
            .filter(|id| {
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .ok_or_else(|| TrustError::NotADevice(self.trust_domain.clone()))?
            .to_owned();
        let usage = cert
            .key_usage()
            .ok()
            .flatten()
            .ok_or(TrustError::WrongUsage("a device certificate signs"))?;
        if !usage.value.digital_signature() || usage.value.key_agreement() {
            return Err(TrustError::WrongUsage("a device certificate signs"));
        }
        Ok(VerifiedDevice {
            device_id,
            spiffe_id,
            serial: cert.raw_serial().to_vec(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            not_after: cert.validity().not_after.timestamp(),
            x5t: certificate_sha256(der),
        })
    }

    /// Checks the key-agreement certificate `der` of `device` at `now`.
    pub fn verify_key_agreement(
        &self,
        der: &[u8],
        device: &VerifiedDevice,
        now: i64,
    ) -> Result<VerifiedKeyAgreement, TrustError> {
        self.verify_chain(der, now)?;
        let (_, cert) = parse(der)?;
        if single_uri(&cert)? != device.spiffe_id {
            return Err(TrustError::NotTheSendersKey);
        }
        let usage = cert
            .key_usage()
            .ok()
            .flatten()
            .ok_or(TrustError::WrongUsage(
                "a key-agreement certificate only agrees keys",
            ))?;
        // keyAgreement, and nothing else (bit 4 alone).
        if usage.value.flags != 1 << 4 {
            return Err(TrustError::WrongUsage(
                "a key-agreement certificate only agrees keys",
            ));
        }
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        if public_key.len() != 65 || public_key.first() != Some(&4) {
            return Err(TrustError::WrongUsage(
                "a key-agreement key is an uncompressed P-256 point",
            ));
        }
        Ok(VerifiedKeyAgreement {
            serial: cert.raw_serial().to_vec(),
            public_key,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// `der` chains through this fleet's issuing CA (and no other intermediate) to the
    /// pinned root, and is valid at `now`.
    fn verify_chain(&self, der: &[u8], now: i64) -> Result<(), TrustError> {
        if der.len() > MAX_CERTIFICATE_BYTES {
            return Err(TrustError::Malformed("too large".into()));
        }
        let untrusted = |e: webpki::Error| TrustError::Untrusted(format!("{e:?}"));
        let root = CertificateDer::from(self.root.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&root).map_err(untrusted)?;
        let leaf = CertificateDer::from(der);
        let leaf = webpki::EndEntityCert::try_from(&leaf).map_err(untrusted)?;
        let issuing = [CertificateDer::from(self.issuing_ca.as_slice())];
        let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).unwrap_or(0),
        ));
        leaf.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &[anchor],
            &issuing,
            when,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(untrusted)?;
        Ok(())
    }
}

fn parse(der: &[u8]) -> Result<(&[u8], X509Certificate<'_>), TrustError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| TrustError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TrustError::Malformed("trailing bytes".into()));
    }
    Ok((rest, cert))
}

/// The certificate's one URI SAN (its SPIFFE ID).
fn single_uri(cert: &X509Certificate<'_>) -> Result<String, TrustError> {
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    match names.as_slice() {
        [x509_parser::extensions::GeneralName::URI(uri)] => Ok((*uri).to_owned()),
        _ => Err(TrustError::NotADevice(
            "a certificate with exactly one URI".into(),
        )),
    }
}
