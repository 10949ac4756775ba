//! The device's X.509 credentials: a fresh P-256 key and its CSR for each enrollment and
//! renewal, what the agent reads from the certificates it gets back, and the fingerprint that
//! pins the root CA.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use time::OffsetDateTime;

/// Why a key, CSR or certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Key generation or CSR signing failed.
    #[error("cannot create the device key or CSR: {0}")]
    Generate(String),
    /// The private key does not parse.
    #[error("the device key does not parse")]
    Key,
    /// A certificate PEM holds no certificate or one that does not parse.
    #[error("{0} does not hold a valid certificate")]
    Certificate(&'static str),
}

/// A new P-256 key pair (PKCS#8 when serialized).
pub fn new_key() -> Result<KeyPair, CredentialError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CredentialError::Generate(e.to_string()))
}

/// A PKCS#10 CSR for `key`, PEM. It names nothing: the server decides every name.
pub fn csr_pem(key: &KeyPair) -> Result<String, CredentialError> {
    CertificateParams::default()
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CredentialError::Generate(e.to_string()))
}

/// What the agent needs from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number, lowercase hex, without DER's sign padding.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The subject public key, as a DER `SubjectPublicKeyInfo`.
    pub spki: Vec<u8>,
    /// The whole certificate, DER.
    pub der: Vec<u8>,
}

impl CertificateInfo {
    /// Reads the first certificate of `pem_text`; `what` names the input in errors.
    pub fn from_pem(pem_text: &str, what: &'static str) -> Result<Self, CredentialError> {
        let der = certificates(pem_text)
            .into_iter()
            .next()
            .ok_or(CredentialError::Certificate(what))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| CredentialError::Certificate(what))?;
        let raw = cert.raw_serial();
        let first = raw
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        let serial = hex::encode(raw.get(first..).unwrap_or(raw));
        let validity = cert.validity();
        Ok(Self {
            serial,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            spki: cert.public_key().raw.to_vec(),
            der: der.clone(),
        })
    }

    /// Whether `key_pem` is the private key of this certificate.
    pub fn matches_key(&self, key_pem: &str) -> bool {
        KeyPair::from_pem(key_pem).is_ok_and(|k| k.public_key_der() == self.spki)
    }
}

/// The DER of every `CERTIFICATE` block in `pem_text`, in order; other blocks are skipped.
pub fn certificates(pem_text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect()
}

/// SHA-256 of the first certificate's DER in `pem_text`: the CA pin.
pub fn fingerprint(pem_text: &str) -> Result<[u8; 32], CredentialError> {
    let der = certificates(pem_text)
        .into_iter()
        .next()
        .ok_or(CredentialError::Certificate("the trust bundle"))?;
    x509_parser::parse_x509_certificate(&der)
        .map_err(|_| CredentialError::Certificate("the trust bundle"))?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
    Ok(out)
}

/// The certificate file the device presents: its certificate, then the chain's certificates
/// other than the root (`root_der`), which the server already has.
pub fn presented_chain(certificate_pem: &str, chain_pem: &str, root_der: &[u8]) -> String {
    let mut blocks = certificates(certificate_pem);
    blocks.extend(
        certificates(chain_pem)
            .into_iter()
            .filter(|c| c != root_der),
    );
    blocks
        .into_iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(key: &KeyPair) -> String {
        let mut params = CertificateParams::new(vec!["device".into()]).unwrap();
        params.serial_number = Some(vec![0x80, 1, 2].into());
        params.self_signed(key).unwrap().pem()
    }

    #[test]
    fn certificates_are_read_and_matched_with_their_key() {
        let key = new_key().unwrap();
        let pem_text = self_signed(&key);
        let info = CertificateInfo::from_pem(&pem_text, "test").unwrap();
        assert_eq!(info.serial, "800102");
        assert!(info.not_before < info.not_after);
        assert!(info.matches_key(&key.serialize_pem()));
        assert!(!info.matches_key(&new_key().unwrap().serialize_pem()));
        assert!(!info.matches_key("not a key"));
        assert_eq!(
            fingerprint(&pem_text).unwrap().as_slice(),
            ring::digest::digest(&ring::digest::SHA256, &info.der).as_ref()
        );
    }

    #[test]
    fn csrs_are_pem_and_keys_pkcs8() {
        let key = new_key().unwrap();
        assert!(csr_pem(&key)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(key
            .serialize_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(CertificateInfo::from_pem("", "x").is_err());
        assert!(
            fingerprint("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
        assert!(certificates("junk").is_empty());
    }

    #[test]
    fn the_presented_chain_leaves_out_the_root() {
        let leaf = self_signed(&new_key().unwrap());
        let issuing = self_signed(&new_key().unwrap());
        let root = self_signed(&new_key().unwrap());
        let root_der = certificates(&root).remove(0);
        let chain = presented_chain(&leaf, &format!("{issuing}{root}"), &root_der);
        let ders = certificates(&chain);
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[0], certificates(&leaf)[0]);
        assert_eq!(ders[1], certificates(&issuing)[0]);
    }
}
