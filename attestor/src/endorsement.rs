//! Whether an endorsement key (EK) may enroll: on the operator's allowlist (by the SHA-256 of
//! its `TPMT_PUBLIC`), or certified by an EK certificate that chains to a configured TPM
//! manufacturer root. A plain function over bytes and a time: the server's enrollment flow
//! calls it, and a fuzz target feeds it hostile certificates.

use crate::tpm::{Public, PublicKey};
use std::collections::BTreeSet;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest EK certificate accepted (DER), bytes.
pub const MAX_EK_CERT_BYTES: usize = 8 * 1024;

/// Deepest EK certificate chain followed to a configured root.
pub const MAX_CHAIN: usize = 4;

/// What the operator trusts TPMs by.
#[derive(Debug, Clone, Default)]
pub struct EkTrust {
    /// TPM manufacturer roots and intermediates (DER). An EK certificate must chain to a
    /// self-signed one of them.
    pub roots: Vec<Vec<u8>>,
    /// SHA-256 (hex) of the `TPMT_PUBLIC` of each EK allowed without a certificate.
    pub allowlist: BTreeSet<String>,
    /// Lab only: with neither roots nor an allowlist, take any EK on first use.
    pub trust_on_first_use: bool,
}

/// How an EK was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkAccepted {
    /// Its fingerprint is on the allowlist.
    Allowlisted,
    /// Its certificate chains to a configured root.
    Certified,
    /// Nothing is configured and the lab-only trust on first use is on.
    TrustedOnFirstUse,
}

/// Why an EK may not enroll.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EkRefusal {
    /// Neither roots nor an allowlist are configured (and no trust on first use).
    #[error("this server trusts no TPM yet: its operator must configure TPM manufacturer roots (--tpm-roots) or an EK allowlist (--tpm-ek-allowlist)")]
    Unconfigured,
    /// Not allowlisted, and no certificate was given.
    #[error("this server enrolls only TPMs whose EK is on its allowlist or whose EK certificate chains to a configured manufacturer root")]
    CertificateRequired,
    /// The certificate, or its chain, is not acceptable.
    #[error("{0}")]
    CertificateInvalid(String),
}

/// The SHA-256 (hex) of an EK's `TPMT_PUBLIC`, as allowlists and the registry name it.
pub fn ek_fingerprint(ek_public: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, ek_public))
}

/// Decides whether the EK `ek` (whose `TPMT_PUBLIC` bytes are `ek_bytes`) may enroll at
/// `now` (unix seconds), given its certificate (DER) if the device sent one. An allowlisted
/// EK needs no certificate; any other must present one that is for this EK, chains through
/// `trust.roots` to a self-signed root, and is valid now, as is every certificate above it.
pub fn check_endorsement(
    trust: &EkTrust,
    ek: &Public,
    ek_bytes: &[u8],
    certificate: Option<&[u8]>,
    now: i64,
) -> Result<EkAccepted, EkRefusal> {
    if trust.roots.is_empty() && trust.allowlist.is_empty() {
        return if trust.trust_on_first_use {
            Ok(EkAccepted::TrustedOnFirstUse)
        } else {
            Err(EkRefusal::Unconfigured)
        };
    }
    if trust.allowlist.contains(&ek_fingerprint(ek_bytes)) {
        return Ok(EkAccepted::Allowlisted);
    }
    let der = certificate.ok_or(EkRefusal::CertificateRequired)?;
    check_certificate(&trust.roots, ek, der, now)?;
    Ok(EkAccepted::Certified)
}

fn invalid(detail: impl Into<String>) -> EkRefusal {
    EkRefusal::CertificateInvalid(detail.into())
}

/// At most `max` characters of `text`, for details that quote certificate fields.
fn bounded(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn check_certificate(
    roots: &[Vec<u8>],
    ek: &Public,
    der: &[u8],
    now: i64,
) -> Result<(), EkRefusal> {
    if der.len() > MAX_EK_CERT_BYTES {
        return Err(invalid("the EK certificate is too large"));
    }
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| invalid(format!("the EK certificate does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the EK certificate"));
    }
    if !certifies(&cert, ek) {
        return Err(invalid(
            "the EK certificate does not certify this endorsement key",
        ));
    }
    let at = x509_parser::time::ASN1Time::from_timestamp(now)
        .map_err(|_| invalid("the time is out of range"))?;
    let authorities: Vec<X509Certificate<'_>> = roots
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    let mut current = cert;
    for _ in 0..MAX_CHAIN {
        if !current.validity().is_valid_at(at) {
            return Err(invalid(format!(
                "certificate `{}` is not valid now",
                bounded(&current.subject().to_string(), 120)
            )));
        }
        let issuer = authorities.iter().find(|ca| {
            let is_ca = matches!(ca.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
            is_ca
                && ca.subject().as_raw() == current.issuer().as_raw()
                && current.verify_signature(Some(ca.public_key())).is_ok()
        });
        let Some(issuer) = issuer else {
            return Err(invalid(
                "the EK certificate does not chain to a configured TPM manufacturer root",
            ));
        };
        if issuer.subject().as_raw() == issuer.issuer().as_raw() {
            return if issuer.validity().is_valid_at(at) {
                Ok(())
            } else {
                Err(invalid("the TPM manufacturer root is not valid now"))
            };
        }
        current = issuer.clone();
    }
    Err(invalid("the EK certificate chain is too long"))
}

/// Whether `cert`'s subject key is the EK's own (RSA EKs: the same modulus).
fn certifies(cert: &X509Certificate<'_>, ek: &Public) -> bool {
    match (cert.public_key().parsed(), &ek.key) {
        (Ok(x509_parser::public_key::PublicKey::RSA(rsa)), PublicKey::Rsa { modulus, .. }) => {
            trim(rsa.modulus) == trim(modulus)
        }
        _ => false,
    }
}

/// `bytes` without leading zeros (DER integers carry one before a high bit).
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}
