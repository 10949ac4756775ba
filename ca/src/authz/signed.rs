//! The signed policy bundle that agents fetch and cache: a JWS (RFC 7515, compact form,
//! ES256) whose payload is the active set's files and version, signed by a policy-signer key
//! whose certificate (issued by the issuing CA, SAN `spiffe://<td>/vouch/policy-signer`,
//! extendedKeyUsage codeSigning only) travels in the `x5c` header with the issuing CA.
//!
//! Agents verify a bundle with [`verify`] (in `vouch-proto`, which the agent shares).

use vouch_proto::bundle::BUNDLE_ISSUER;
pub use vouch_proto::bundle::{verify, BundleClaims, BundleError, MAX_BUNDLE_BYTES};

use super::ActiveSet;
use crate::ids::TrustDomain;
use crate::pki::authority::Authority;
use crate::pki::profile::issue_policy_signer_certificate;
use crate::pki::PkiError;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::Mutex;
use time::OffsetDateTime;

/// Lifetime of a policy-signer certificate; a new signer is issued at half of it.
pub const SIGNER_LIFETIME_SECS: i64 = 7 * 24 * 3600;
/// Media type of the bundle.
pub(crate) const CONTENT_TYPE: &str = "application/jose";

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
    sequence: i64,
    jws: String,
}

/// Signs bundles, caching the signature of the active version; cheap to share.
#[derive(Default)]
pub struct BundleSigning {
    state: Mutex<(Option<Signer>, Option<Cached>)>,
    /// The sequence number of the last set signed here, by content hash (see
    /// `Registry::policy_sequence`): the registry is asked once per set.
    sequence: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for BundleSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSigning").finish_non_exhaustive()
    }
}

impl BundleSigning {
    /// The sequence number remembered for the set with `content_hash`, if any.
    pub(crate) fn sequence_of(&self, content_hash: &str) -> Option<i64> {
        let known = self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known
            .as_ref()
            .filter(|(hash, _)| hash == content_hash)
            .map(|(_, sequence)| *sequence)
    }

    /// Remembers the registry's sequence number for the set with `content_hash`.
    pub(crate) fn remember_sequence(&self, content_hash: &str, sequence: i64) {
        *self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((content_hash.to_owned(), sequence));
    }

    /// The signed bundle of `set`, numbered `sequence`, signed now unless the same version
    /// was already signed by the current signer.
    pub fn signed(
        &self,
        ca: &Authority,
        trust_domain: &TrustDomain,
        set: &ActiveSet,
        sequence: i64,
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
            if c.version == set.version.id
                && c.content_hash == set.version.content_hash
                && c.sequence == sequence
            {
                return Ok(c.jws.clone());
            }
        }
        let claims = BundleClaims {
            iss: BUNDLE_ISSUER.into(),
            iat: unix,
            version: set.version.id.clone(),
            sequence,
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
            sequence,
            jws: jws.clone(),
        });
        Ok(jws)
    }
}
