//! Strict PKCS#10 checks for device CSRs.
//!
//! A CSR from a device proves possession of its private key; nothing else in it is trusted.
//! Names and extensions it asks for are ignored: the registry decides what the certificate
//! says. Accepted keys: ECDSA P-256 (SHA-256), ECDSA P-384 (SHA-384), Ed25519, and RSA of
//! 2048 to 4096 bits (PKCS#1 v1.5 SHA-256).

use rcgen::{PublicKeyData, SignatureAlgorithm};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Largest CSR accepted, in PEM characters. A 4096-bit RSA CSR is about 1.7 KB of PEM.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// Larger than [`MAX_CSR_PEM_LEN`].
    #[error("CSR is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// Not exactly one PEM block labelled `CERTIFICATE REQUEST`.
    #[error("CSR must be exactly one PEM block labelled `CERTIFICATE REQUEST`")]
    NotPem,
    /// The DER inside is not a PKCS#10 request.
    #[error("CSR is not a well-formed PKCS#10 request")]
    Malformed,
    /// Bytes follow the request inside the PEM block.
    #[error("CSR has trailing data after the request")]
    TrailingData,
    /// The key type or curve is not accepted.
    #[error(
        "CSR key type is not accepted ({0}); use ECDSA P-256 or P-384, Ed25519, or RSA 2048-4096"
    )]
    UnsupportedKey(String),
    /// An RSA key of a size outside 2048-4096 bits.
    #[error("RSA key of {bits} bits is not accepted; use 2048 to 4096 bits")]
    RsaKeySize {
        /// The modulus size.
        bits: usize,
    },
    /// The signature algorithm does not fit the key.
    #[error("CSR signature algorithm `{0}` is not accepted for its key")]
    SignatureAlgorithm(String),
    /// The self-signature does not verify: the sender does not hold the key.
    #[error("CSR signature does not verify")]
    BadSignature,
}

/// The public key of a checked CSR, ready to be certified.
#[derive(Debug, Clone)]
pub struct CsrPublicKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        self.alg
    }
}

/// Parses a PEM CSR and checks it; see [`check_csr_der`].
pub fn check_csr_pem(pem_text: &str) -> Result<CsrPublicKey, CsrError> {
    if pem_text.len() > MAX_CSR_PEM_LEN {
        return Err(CsrError::TooLarge {
            max: MAX_CSR_PEM_LEN,
        });
    }
    let blocks = pem::parse_many(pem_text).map_err(|_| CsrError::NotPem)?;
    match blocks.as_slice() {
        [block] if block.tag() == "CERTIFICATE REQUEST" => check_csr_der(block.contents()),
        _ => Err(CsrError::NotPem),
    }
}

/// Parses a DER CSR strictly, checks its key type and size and its signature algorithm, and
/// verifies its self-signature with ring.
pub fn check_csr_der(der: &[u8]) -> Result<CsrPublicKey, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData);
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CsrError::Malformed);
    }
    let spki = &info.subject_pki;
    let key_bits: &[u8] = &spki.subject_public_key.data;
    let sig_oid = &csr.signature_algorithm.algorithm;
    let key_oid = &spki.algorithm.algorithm;

    let (ring_alg, rcgen_alg): (
        &'static dyn VerificationAlgorithm,
        &'static SignatureAlgorithm,
    ) = if *key_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 {
            expect_sig(sig_oid, &OID_SIG_ECDSA_WITH_SHA256)?;
            (
                &signature::ECDSA_P256_SHA256_ASN1,
                &rcgen::PKCS_ECDSA_P256_SHA256,
            )
        } else if curve == OID_NIST_EC_P384 {
            expect_sig(sig_oid, &OID_SIG_ECDSA_WITH_SHA384)?;
            (
                &signature::ECDSA_P384_SHA384_ASN1,
                &rcgen::PKCS_ECDSA_P384_SHA384,
            )
        } else {
            return Err(CsrError::UnsupportedKey(format!("EC curve {curve}")));
        }
    } else if *key_oid == OID_SIG_ED25519 {
        expect_sig(sig_oid, &OID_SIG_ED25519)?;
        (&signature::ED25519, &rcgen::PKCS_ED25519)
    } else if *key_oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed),
        };
        if !(2048..=4096).contains(&bits) {
            return Err(CsrError::RsaKeySize { bits });
        }
        expect_sig(sig_oid, &OID_PKCS1_SHA256WITHRSA)?;
        (
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &rcgen::PKCS_RSA_SHA256,
        )
    } else {
        return Err(CsrError::UnsupportedKey(format!("algorithm {key_oid}")));
    };

    UnparsedPublicKey::new(ring_alg, key_bits)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| CsrError::BadSignature)?;
    Ok(CsrPublicKey {
        raw: key_bits.to_vec(),
        alg: rcgen_alg,
    })
}

fn expect_sig(actual: &Oid<'_>, expected: &Oid<'static>) -> Result<(), CsrError> {
    if actual == expected {
        Ok(())
    } else {
        Err(CsrError::SignatureAlgorithm(actual.to_id_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn csr_for(alg: &'static SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        CertificateParams::new(vec!["ignored.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn accepts_p256_p384_ed25519() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = check_csr_pem(&csr_for(alg)).unwrap();
            assert_eq!(key.algorithm(), alg);
        }
    }

    #[test]
    fn flipped_signature_bit_is_refused() {
        let pem_text = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut der = pem::parse(&pem_text).unwrap().into_contents();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        // Flipping the last byte of an ECDSA signature either breaks the DER of the signature
        // value or the signature itself: both must be refused, never accepted.
        assert!(check_csr_der(&der).is_err());
    }

    #[test]
    fn garbage_and_truncations_never_panic() {
        let pem_text = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let der = pem::parse(&pem_text).unwrap().into_contents();
        for cut in 0..der.len() {
            assert!(check_csr_der(&der[..cut]).is_err());
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(
            check_csr_der(&trailing).unwrap_err(),
            CsrError::TrailingData
        );
        assert_eq!(check_csr_pem("hello").unwrap_err(), CsrError::NotPem);
        let two = format!("{pem_text}{pem_text}");
        assert_eq!(check_csr_pem(&two).unwrap_err(), CsrError::NotPem);
    }
}
