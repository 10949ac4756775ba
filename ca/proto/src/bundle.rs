//! The signed policy bundle as an agent verifies it: a JWS (RFC 7515, compact form, ES256)
//! whose payload is the active set's files and version, signed by a policy-signer key whose
//! certificate (issued by the issuing CA, SAN `spiffe://<td>/vouch/policy-signer`,
//! extendedKeyUsage codeSigning only) travels in the `x5c` header with the issuing CA.
//!
//! Where a bundle came from is checked with the trust bundle alone: the `x5c` chain must
//! lead to the root, the leaf must be the policy signer of its trust domain, the signature
//! must verify, and the files must hash to the content hash inside the payload. Then the
//! files load with `vouch_policy::bundle::load_files`. The server signs (`vouch_ca::authz::
//! signed`); this is the one verifier, shared by the agent and the server's tests.

use crate::ids::TrustDomain;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeMap;

/// Largest bundle a verifier accepts, in bytes.
pub const MAX_BUNDLE_BYTES: usize = 16 * 1024 * 1024;
/// Issuer claim of bundles.
pub const BUNDLE_ISSUER: &str = "vouch";
/// The policy signer's SPIFFE ID path, under the trust domain.
pub const POLICY_SIGNER_PATH: &str = "vouch/policy-signer";
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content of the OID.
pub const CODE_SIGNING_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// The payload of a signed bundle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleClaims {
    /// Always `vouch`.
    pub iss: String,
    /// When it was signed (Unix seconds).
    pub iat: i64,
    /// The version decisions name (commit id or `sha256:<hash>`).
    pub version: String,
    /// Goes up each time the fleet's active policy set changes (across replicas, from the
    /// registry): an agent refuses a bundle numbered below the one it holds, so an old bundle
    /// replayed cannot roll its policy back. 0 in bundles made before it existed.
    #[serde(default)]
    pub sequence: i64,
    /// The Git commit, if any.
    pub commit: Option<String>,
    /// SHA-256 over the files (see `vouch_policy::bundle::content_hash`).
    pub content_hash: String,
    /// The files: `schema.cedarschema`, `fleet.json`, `policies/*.cedar`.
    pub files: BTreeMap<String, String>,
}

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Too large to consider.
    #[error("bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    /// Not a JWS of the expected form.
    #[error("bundle is not a valid JWS: {0}")]
    Malformed(String),
    /// The `x5c` chain does not lead to the trusted root, or the leaf may not sign bundles.
    #[error("bundle signer is not trusted: {0}")]
    UntrustedSigner(String),
    /// The signature does not verify.
    #[error("bundle signature does not verify")]
    BadSignature,
    /// The files do not match the content hash they were signed with.
    #[error("bundle files do not match their content hash")]
    HashMismatch,
}

/// Verifies a signed bundle against the root certificate `root_der` of `trust_domain` at
/// time `now` (Unix seconds) and returns its payload.
pub fn verify(
    jws: &str,
    root_der: &[u8],
    trust_domain: &TrustDomain,
    now: i64,
) -> Result<BundleClaims, BundleError> {
    if jws.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    let header =
        jsonwebtoken::decode_header(jws).map_err(|e| BundleError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(BundleError::Malformed("algorithm must be ES256".into()));
    }
    let chain = header
        .x5c_der()
        .map_err(|e| BundleError::Malformed(format!("x5c: {e}")))?
        .ok_or_else(|| BundleError::Malformed("no x5c header".into()))?;
    let (leaf_der, intermediates) = match chain.split_first() {
        Some((leaf, rest)) if rest.len() <= 3 => (leaf.clone(), rest.to_vec()),
        _ => {
            return Err(BundleError::Malformed(
                "x5c must hold 1 to 4 certificates".into(),
            ))
        }
    };

    // The chain: leaf → intermediates → the trusted root, for code signing, valid now.
    let untrusted = |e: &dyn std::fmt::Display| BundleError::UntrustedSigner(e.to_string());
    let root = CertificateDer::from(root_der);
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| untrusted(&e))?;
    let leaf_cert = CertificateDer::from(leaf_der.as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_cert).map_err(|e| untrusted(&e))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    leaf.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &intermediates,
        when,
        // `required_if_present`: the CA certificates above carry no EKU. webpki lets a leaf
        // without any EKU pass too, so the leaf's is required explicitly below.
        webpki::KeyUsage::required_if_present(CODE_SIGNING_OID),
        None,
        None,
    )
    .map_err(|e| untrusted(&e))?;

    // The leaf must be this trust domain's policy signer, for code signing: an
    // extendedKeyUsage that names code signing, not merely no EKU at all (which any TLS-less
    // end entity of the same root might have).
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf_der).map_err(|e| untrusted(&e))?;
    let code_signing =
        matches!(parsed.extended_key_usage(), Ok(Some(eku)) if eku.value.code_signing);
    if !code_signing {
        return Err(BundleError::UntrustedSigner(
            "leaf certificate is not for code signing (no extendedKeyUsage codeSigning)".into(),
        ));
    }
    let expected = format!("spiffe://{}/{POLICY_SIGNER_PATH}", trust_domain.as_str());
    let names_signer = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.len() == 1
                && san.value.general_names.iter().all(
                    |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == expected),
                )
        });
    if !names_signer {
        return Err(BundleError::UntrustedSigner(format!(
            "leaf certificate is not `{expected}`"
        )));
    }

    let key = DecodingKey::from_ec_der(&parsed.public_key().subject_public_key.data);
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_issuer(&[BUNDLE_ISSUER]);
    let data = jsonwebtoken::decode::<BundleClaims>(jws, &key, &validation).map_err(|e| match e
        .kind()
    {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => BundleError::BadSignature,
        _ => BundleError::Malformed(e.to_string()),
    })?;
    let claims = data.claims;
    if vouch_policy::bundle::content_hash(&claims.files) != claims.content_hash {
        return Err(BundleError::HashMismatch);
    }
    Ok(claims)
}
