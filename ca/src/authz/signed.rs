//! The signed policy bundle that agents fetch and cache: a JWS (RFC 7515, compact form,
//! ES256) whose payload is the active set's files and version, signed by a policy-signer key
//! whose certificate (issued by the issuing CA, SAN `spiffe://<td>/vouch/policy-signer`,
//! extendedKeyUsage codeSigning only) travels in the `x5c` header with the issuing CA.
//!
//! An agent checks where a bundle came from with the trust bundle alone: the `x5c` chain
//! must lead to the root, the leaf must be the policy signer of its trust domain, the
//! signature must verify, and the files must hash to the content hash inside the payload.
//! Then it loads the files with `vouch_policy::bundle::load_files`.

use super::ActiveSet;
use crate::ids::TrustDomain;
use crate::pki::authority::Authority;
use crate::pki::profile::{issue_policy_signer_certificate, CODE_SIGNING_OID, POLICY_SIGNER_PATH};
use crate::pki::PkiError;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeMap;
use std::sync::Mutex;
use time::OffsetDateTime;

/// Lifetime of a policy-signer certificate; a new signer is issued at half of it.
pub const SIGNER_LIFETIME_SECS: i64 = 7 * 24 * 3600;
/// Largest bundle a verifier accepts, in bytes.
pub const MAX_BUNDLE_BYTES: usize = 16 * 1024 * 1024;
/// Issuer claim of bundles.
pub(crate) const BUNDLE_ISSUER: &str = "vouch";
/// Media type of the bundle.
pub(crate) const CONTENT_TYPE: &str = "application/jose";

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

/// Why a bundle could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Issuing the signer certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Signing failed.
    #[error("signing the policy bundle failed: {0}")]
    Jws(#[from] jsonwebtoken::errors::Error),
}

struct Signer {
    key: EncodingKey,
    x5c: Vec<String>,
    issued_at: i64,
}

struct Cached {
    content_hash: String,
    version: String,
    jws: String,
}

/// Signs bundles, caching the signature of the active version; cheap to share.
#[derive(Default)]
pub struct BundleSigning {
    state: Mutex<(Option<Signer>, Option<Cached>)>,
}

impl std::fmt::Debug for BundleSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSigning").finish_non_exhaustive()
    }
}

impl BundleSigning {
    /// The signed bundle of `set`, signed now unless the same version was already signed by
    /// the current signer.
    pub fn signed(
        &self,
        ca: &Authority,
        trust_domain: &TrustDomain,
        set: &ActiveSet,
        now: OffsetDateTime,
    ) -> Result<String, SignError> {
        let unix = now.unix_timestamp();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (signer_slot, cached) = &mut *state;
        let signer = match signer_slot {
            Some(s) if unix - s.issued_at < SIGNER_LIFETIME_SECS / 2 => s,
            _ => {
                let (cert, key) = issue_policy_signer_certificate(
                    ca,
                    trust_domain,
                    now,
                    time::Duration::seconds(SIGNER_LIFETIME_SECS),
                )?;
                let b64 = base64::engine::general_purpose::STANDARD;
                *cached = None;
                signer_slot.insert(Signer {
                    key: EncodingKey::from_ec_der(&key.serialize_der()),
                    x5c: vec![b64.encode(&cert.der), b64.encode(ca.issuing_der())],
                    issued_at: unix,
                })
            }
        };
        if let Some(c) = cached.as_ref() {
            if c.version == set.version.id && c.content_hash == set.version.content_hash {
                return Ok(c.jws.clone());
            }
        }
        let claims = BundleClaims {
            iss: BUNDLE_ISSUER.into(),
            iat: unix,
            version: set.version.id.clone(),
            commit: set.version.commit.clone(),
            content_hash: set.version.content_hash.clone(),
            files: set.bundle.files.clone(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("vouch-policy-bundle+jwt".into());
        header.x5c = Some(signer.x5c.clone());
        let jws = jsonwebtoken::encode(&header, &claims, &signer.key)?;
        *cached = Some(Cached {
            content_hash: set.version.content_hash.clone(),
            version: set.version.id.clone(),
            jws: jws.clone(),
        });
        Ok(jws)
    }
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
