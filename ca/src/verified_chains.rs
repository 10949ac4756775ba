//! Client chains verified once per certificate, not once per connection: a wrapper around
//! rustls' webpki client verifier that remembers each chain that checked out (by the SHA-256
//! of the chain as presented) for as long as every certificate in it is valid.
//!
//! What a chain check reads is the chain's bytes, the trust anchor (fixed for the life of the
//! server's TLS configuration, which owns this cache) and the time; the time enters only as
//! the certificates' validity, so a result holds within their intersection. Only successes are
//! kept; a chain that failed is checked in full again. Revocation and the holder's standing
//! are not part of it: they are checked against the registry on every request.
//! The handshake signature (CertificateVerify), which proves the client holds the key, is
//! verified on every full handshake; a resumed handshake skips both, as rustls does.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vouch_proto::validity::{insert_bounded, Validity};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How many verified chains are remembered; when full, the cache starts again empty.
pub(crate) const VERIFIED_CHAINS_CAPACITY: usize = 100_000;

/// A client verifier that remembers the chains its inner verifier accepted.
#[derive(Debug)]
pub(crate) struct CachingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    capacity: usize,
    verified: Mutex<HashMap<[u8; 32], Validity>>,
    /// Chains handed to `inner` so far.
    full_checks: AtomicU64,
}

impl CachingClientVerifier {
    /// Wraps `inner`, remembering at most `capacity` chains.
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, capacity: usize) -> Self {
        Self {
            inner,
            capacity,
            verified: Mutex::new(HashMap::new()),
            full_checks: AtomicU64::new(0),
        }
    }

    /// Chains verified in full so far (not answered from the cache).
    #[cfg(test)]
    fn full_checks(&self) -> u64 {
        self.full_checks.load(Ordering::Relaxed)
    }

    /// Chains remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Validity>> {
        // Nothing panics while holding the lock; the map holds only results that checked out.
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The SHA-256 of a presented chain: each certificate with its length before it, so no two
/// different chains share an input.
fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for cert in std::iter::once(end_entity).chain(intermediates) {
        digest.update(&(cert.len() as u64).to_be_bytes());
        digest.update(cert.as_ref());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.finish().as_ref());
    key
}

/// The intersection of the presented certificates' validity; `None` if one does not parse
/// (such a chain is not remembered).
fn chain_validity(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<Validity> {
    let mut window = Validity {
        not_before: i64::MIN,
        not_after: i64::MAX,
    };
    for cert in std::iter::once(end_entity).chain(intermediates) {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        window = Validity::of(&parsed).within(window);
    }
    Some(window)
}

impl ClientCertVerifier for CachingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = chain_key(end_entity, intermediates);
        let seconds = i64::try_from(now.as_secs()).unwrap_or(-1);
        if self
            .lock()
            .get(&key)
            .is_some_and(|window| window.contains(seconds))
        {
            return Ok(ClientCertVerified::assertion());
        }
        self.full_checks.fetch_add(1, Ordering::Relaxed);
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(window) = chain_validity(end_entity, intermediates) {
            insert_bounded(&mut self.lock(), self.capacity, key, window);
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{system_rng, DeviceId, Serial, TrustDomain, Zone};
    use crate::pki::authority::{generate, Authority};
    use crate::pki::profile::{issue_device_certificate, DeviceCertificateSpec};
    use time::OffsetDateTime;

    fn authority(now: OffsetDateTime) -> Authority {
        Authority::load(&generate("example.org", now).unwrap()).unwrap()
    }

    /// A device certificate of `ca` living an hour from `now`, with its issuing CA.
    fn chain(ca: &Authority, now: OffsetDateTime) -> (CertificateDer<'static>, i64) {
        let key = rcgen::KeyPair::generate().unwrap();
        let issued = issue_device_certificate(
            ca,
            &DeviceCertificateSpec {
                device_id: &DeviceId::random(&system_rng()).unwrap(),
                trust_domain: &TrustDomain::parse("example.org").unwrap(),
                zone: &Zone::parse("sensors").unwrap(),
                serial: &Serial::random(&system_rng()).unwrap(),
                now,
                lifetime: time::Duration::hours(1),
                crl_url: "https://localhost/v1/crl",
            },
            &key,
        )
        .unwrap();
        (
            CertificateDer::from(issued.der),
            issued.not_after.unix_timestamp(),
        )
    }

    fn verifier(ca: &Authority) -> CachingClientVerifier {
        let provider = Arc::new(vouch_proto::tls::crypto_provider());
        CachingClientVerifier::new(crate::server::client_verifier(ca, provider).unwrap(), 4)
    }

    fn at(seconds: i64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds as u64))
    }

    #[test]
    fn a_chain_is_verified_once_and_then_remembered_while_it_is_valid() {
        let now = OffsetDateTime::now_utc();
        let ca = authority(now);
        let verifier = verifier(&ca);
        let (leaf, not_after) = chain(&ca, now);
        let issuing = [CertificateDer::from(ca.issuing_der().to_vec())];
        let t = now.unix_timestamp();
        for _ in 0..3 {
            verifier.verify_client_cert(&leaf, &issuing, at(t)).unwrap();
        }
        assert_eq!(verifier.full_checks(), 1, "verified once");
        assert_eq!(verifier.len(), 1);
        // The same leaf presented without its intermediate is another chain.
        verifier.verify_client_cert(&leaf, &[], at(t)).unwrap();
        assert_eq!(verifier.full_checks(), 2);
        // After the certificate expires the cache does not answer; webpki refuses it.
        assert!(verifier
            .verify_client_cert(&leaf, &issuing, at(not_after + 1))
            .is_err());
        assert_eq!(verifier.full_checks(), 3);
        // Nor before it begins (a clock set back).
        assert!(verifier
            .verify_client_cert(&leaf, &issuing, at(t - 86_400 * 30))
            .is_err());
    }

    #[test]
    fn a_chain_that_fails_is_not_remembered_and_the_cache_stays_bounded() {
        let now = OffsetDateTime::now_utc();
        let (ours, other) = (authority(now), authority(now));
        let verifier = verifier(&ours);
        let (foreign, _) = chain(&other, now);
        let t = now.unix_timestamp();
        for _ in 0..2 {
            assert!(verifier.verify_client_cert(&foreign, &[], at(t)).is_err());
        }
        assert_eq!(verifier.full_checks(), 2, "each failure checked in full");
        assert_eq!(verifier.len(), 0);
        for _ in 0..9 {
            let (leaf, _) = chain(&ours, now);
            verifier.verify_client_cert(&leaf, &[], at(t)).unwrap();
            assert!(verifier.len() <= 4);
        }
    }
}
