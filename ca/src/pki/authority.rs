//! The two-level CA: an offline-capable root and an online issuing CA, both ECDSA P-256.
//!
//! The root signs only the issuing CA; the issuing CA signs device certificates, the server's
//! TLS certificate and CRLs. Both are always loaded from their PEM files, so a freshly created
//! CA and an imported one take the same path.

use super::extensions::{key_usage, KeyUsageBit};
use super::{fingerprint_sha256, PkiError};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// PEM files of a CA pair, as written to or read from the data directory.
#[derive(Clone)]
pub struct CaFiles {
    /// Root CA certificate, PEM.
    pub root_cert_pem: String,
    /// Root CA private key, PKCS#8 PEM (absent when the root is kept offline).
    pub root_key_pem: Option<String>,
    /// Issuing CA certificate, PEM.
    pub issuing_cert_pem: String,
    /// Issuing CA private key, PKCS#8 PEM.
    pub issuing_key_pem: String,
}

impl std::fmt::Debug for CaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CaFiles").finish_non_exhaustive()
    }
}

/// Generates a new root and issuing CA for `trust_domain`.
pub fn generate(trust_domain: &str, now: OffsetDateTime) -> Result<CaFiles, PkiError> {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut root = CertificateParams::default();
    root.distinguished_name = ca_name(trust_domain, "Vouch Root CA");
    root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    // keyUsage in exact DER (rcgen's own encoding has trailing zero bits).
    root.custom_extensions = vec![key_usage(&[KeyUsageBit::KeyCertSign, KeyUsageBit::CrlSign])];
    root.not_before = now - Duration::minutes(5);
    root.not_after = now + Duration::days(3650);
    root.serial_number = Some(random_serial()?);
    let root_cert = root.self_signed(&root_key)?;

    let issuing_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut issuing = CertificateParams::default();
    issuing.distinguished_name = ca_name(trust_domain, "Vouch Issuing CA");
    issuing.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    issuing.custom_extensions = vec![key_usage(&[
        KeyUsageBit::KeyCertSign,
        KeyUsageBit::CrlSign,
        KeyUsageBit::DigitalSignature,
    ])];
    issuing.use_authority_key_identifier_extension = true;
    issuing.not_before = now - Duration::minutes(5);
    issuing.not_after = now + Duration::days(5 * 365);
    issuing.serial_number = Some(random_serial()?);
    let issuing_cert = issuing.signed_by(&issuing_key, &root_cert, &root_key)?;

    Ok(CaFiles {
        root_cert_pem: root_cert.pem(),
        root_key_pem: Some(root_key.serialize_pem()),
        issuing_cert_pem: issuing_cert.pem(),
        issuing_key_pem: issuing_key.serialize_pem(),
    })
}

fn ca_name(trust_domain: &str, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> Result<rcgen::SerialNumber, PkiError> {
    let serial =
        crate::ids::Serial::random(&crate::ids::system_rng()).map_err(|_| PkiError::Random)?;
    Ok(rcgen::SerialNumber::from_slice(serial.bytes()))
}

/// The loaded issuing CA: what the server needs to sign.
pub struct Authority {
    issuing: Certificate,
    issuing_key: KeyPair,
    issuing_der: Vec<u8>,
    root_der: Vec<u8>,
    root_fingerprint: String,
    chain_pem: String,
    root_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("root_fingerprint", &self.root_fingerprint)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from its PEM files and checks that they fit together: the issuing
    /// certificate is a CA certificate signed by the root, and its key matches it.
    pub fn load(files: &CaFiles) -> Result<Self, PkiError> {
        let root_der = single_cert_der(&files.root_cert_pem, "root certificate")?;
        let issuing_der = single_cert_der(&files.issuing_cert_pem, "issuing certificate")?;
        check_issued_by(&issuing_der, &root_der)?;

        let issuing_key = KeyPair::from_pem(&files.issuing_key_pem).map_err(|_| {
            PkiError::InvalidCa("issuing key is not a PKCS#8 PEM key rcgen can use".into())
        })?;
        let params = CertificateParams::from_ca_cert_pem(&files.issuing_cert_pem)
            .map_err(|e| PkiError::InvalidCa(format!("issuing certificate: {e}")))?;
        // `from_ca_cert_pem` keeps the subject and the subject key identifier. Re-signing the
        // parameters with the key gives rcgen its issuer object; it also proves that the key
        // matches the certificate's public key, which is checked next.
        let issuing = params.self_signed(&issuing_key)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&issuing_der)
            .map_err(|_| PkiError::InvalidCa("issuing certificate does not parse".into()))?;
        if parsed.public_key().raw != issuing_key.public_key_der().as_slice() {
            return Err(PkiError::InvalidCa(
                "issuing key does not match the issuing certificate".into(),
            ));
        }
        let root_pem = cert_pem(&root_der);
        let issuing_pem = cert_pem(&issuing_der);
        Ok(Self {
            root_fingerprint: fingerprint_sha256(&root_der),
            chain_pem: format!("{issuing_pem}{root_pem}"),
            root_pem,
            issuing,
            issuing_key,
            issuing_der,
            root_der,
        })
    }

    /// The issuing CA as an rcgen issuer.
    pub fn issuer(&self) -> (&Certificate, &KeyPair) {
        (&self.issuing, &self.issuing_key)
    }

    /// DER of the root certificate.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// DER of the issuing certificate.
    pub fn issuing_der(&self) -> &[u8] {
        &self.issuing_der
    }

    /// PEM of the root certificate (the trust bundle).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// PEM of the chain above a device certificate: issuing CA, then root.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// SHA-256 of the root certificate, lowercase hex: what bootstrap tokens carry.
    pub(crate) fn root_fingerprint(&self) -> &str {
        &self.root_fingerprint
    }
}

/// PEM text of a DER certificate, with LF line endings.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn single_cert_der(pem_text: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    let blocks = pem::parse_many(pem_text)
        .map_err(|_| PkiError::InvalidCa(format!("{what} is not valid PEM")))?;
    match blocks.as_slice() {
        [block] if block.tag() == "CERTIFICATE" => Ok(block.contents().to_vec()),
        _ => Err(PkiError::InvalidCa(format!(
            "{what} must be exactly one CERTIFICATE PEM block"
        ))),
    }
}

fn check_issued_by(child_der: &[u8], parent_der: &[u8]) -> Result<(), PkiError> {
    let (_, child) = x509_parser::parse_x509_certificate(child_der)
        .map_err(|_| PkiError::InvalidCa("issuing certificate does not parse".into()))?;
    let (_, parent) = x509_parser::parse_x509_certificate(parent_der)
        .map_err(|_| PkiError::InvalidCa("root certificate does not parse".into()))?;
    if !child.is_ca() || !parent.is_ca() {
        return Err(PkiError::InvalidCa(
            "root and issuing certificates must both be CA certificates".into(),
        ));
    }
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|_| PkiError::InvalidCa("issuing certificate is not signed by the root".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ca_loads_and_mismatched_key_is_refused() {
        let now = OffsetDateTime::now_utc();
        let files = generate("fleet.example", now).unwrap();
        let ca = Authority::load(&files).unwrap();
        assert_eq!(ca.root_fingerprint().len(), 64);

        let other = generate("fleet.example", now).unwrap();
        let mixed = CaFiles {
            issuing_key_pem: other.issuing_key_pem.clone(),
            ..files.clone()
        };
        assert!(Authority::load(&mixed).is_err());
        let wrong_root = CaFiles {
            root_cert_pem: other.root_cert_pem,
            ..files
        };
        assert!(Authority::load(&wrong_root).is_err());
    }
}
