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
pub(crate) const MAX_CSR_PEM_LEN: usize = 16 * 1024;

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

impl CsrPublicKey {
    /// Whether the key is an EC P-256 key (what a key-agreement certificate certifies).
    pub fn is_p256(&self) -> bool {
        *self.alg == rcgen::PKCS_ECDSA_P256_SHA256
    }
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
    // DER BIT STRINGs of keys and signatures are whole bytes; anything else is a malleable
    // encoding of the same request.
    if spki.subject_public_key.unused_bits != 0 || csr.signature_value.unused_bits != 0 {
        return Err(CsrError::Malformed);
    }
    let key_bits: &[u8] = &spki.subject_public_key.data;
    let sig_oid = &csr.signature_algorithm.algorithm;
    let key_oid = &spki.algorithm.algorithm;

    let (kind, rcgen_alg): (KeyKind, &'static SignatureAlgorithm) =
        if *key_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
            if curve == OID_EC_P256 {
                expect_sig(sig_oid, &OID_SIG_ECDSA_WITH_SHA256)?;
                (KeyKind::EcdsaP256, &rcgen::PKCS_ECDSA_P256_SHA256)
            } else if curve == OID_NIST_EC_P384 {
                expect_sig(sig_oid, &OID_SIG_ECDSA_WITH_SHA384)?;
                (KeyKind::EcdsaP384, &rcgen::PKCS_ECDSA_P384_SHA384)
            } else {
                return Err(CsrError::UnsupportedKey(format!("EC curve {curve}")));
            }
        } else if *key_oid == OID_SIG_ED25519 {
            expect_sig(sig_oid, &OID_SIG_ED25519)?;
            (KeyKind::Ed25519, &rcgen::PKCS_ED25519)
        } else if *key_oid == OID_PKCS1_RSAENCRYPTION {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => return Err(CsrError::Malformed),
            };
            if !(2048..=4096).contains(&bits) {
                return Err(CsrError::RsaKeySize { bits });
            }
            expect_sig(sig_oid, &OID_PKCS1_SHA256WITHRSA)?;
            (KeyKind::Rsa, &rcgen::PKCS_RSA_SHA256)
        } else {
            return Err(CsrError::UnsupportedKey(format!("algorithm {key_oid}")));
        };

    // x509-parser is lenient about tags outside the signed part (it accepts, for example, a
    // primitive SEQUENCE or a context-class BIT STRING). Those bytes are not covered by the
    // signature, so require them to be exactly the DER of what was parsed: one encoding per
    // request, nothing malleable.
    let expected = outer_der(info.raw, algorithm_der(kind), &csr.signature_value.data);
    if expected.as_slice() != der {
        return Err(CsrError::Malformed);
    }
    verify_signature(kind, key_bits, info.raw, &csr.signature_value.data)?;
    Ok(CsrPublicKey {
        raw: key_bits.to_vec(),
        alg: rcgen_alg,
    })
}

/// The key and signature kinds a CSR may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256, SHA-256, DER signature.
    EcdsaP256,
    /// ECDSA P-384, SHA-384, DER signature.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA PKCS#1 v1.5 with SHA-256 (2048 bits and more; the caller bounds the size).
    Rsa,
}

/// Verifies `signature` over `message` with `public_key` (the subjectPublicKey bytes) using
/// ring. The Wycheproof vectors in `tests/vectors/` run through this function.
pub fn verify_signature(
    kind: KeyKind,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CsrError> {
    let alg: &'static dyn VerificationAlgorithm = match kind {
        KeyKind::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyKind::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyKind::Ed25519 => &signature::ED25519,
        KeyKind::Rsa => &signature::RSA_PKCS1_2048_8192_SHA256,
    };
    UnparsedPublicKey::new(alg, public_key)
        .verify(message, signature)
        .map_err(|_| CsrError::BadSignature)
}

/// DER of the signatureAlgorithm AlgorithmIdentifier for each accepted kind (RFC 5758,
/// RFC 8410, RFC 4055: RSA with explicit NULL parameters).
fn algorithm_der(kind: KeyKind) -> &'static [u8] {
    match kind {
        KeyKind::EcdsaP256 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ],
        KeyKind::EcdsaP384 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
        ],
        KeyKind::Ed25519 => &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70],
        KeyKind::Rsa => &[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
            0x00,
        ],
    }
}

/// DER length octets.
fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// DER of `SEQUENCE { info, algorithm, BIT STRING signature }`.
fn outer_der(info: &[u8], algorithm: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut bit_string = vec![0x03];
    bit_string.extend(der_length(signature.len() + 1));
    bit_string.push(0);
    bit_string.extend_from_slice(signature);
    let body_len = info.len() + algorithm.len() + bit_string.len();
    let mut out = vec![0x30];
    out.extend(der_length(body_len));
    out.extend_from_slice(info);
    out.extend_from_slice(algorithm);
    out.extend(bit_string);
    out
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
    fn no_single_bit_flip_is_accepted() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let der = pem::parse(csr_for(alg)).unwrap().into_contents();
            assert!(check_csr_der(&der).is_ok());
            let mut accepted = Vec::new();
            for byte in 0..der.len() {
                for bit in 0..8 {
                    let mut flipped = der.clone();
                    flipped[byte] ^= 1 << bit;
                    if check_csr_der(&flipped).is_ok() {
                        accepted.push((byte, bit, der[byte]));
                    }
                }
            }
            assert!(
                accepted.is_empty(),
                "accepted flips (byte, bit, original): {accepted:?}"
            );
        }
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
