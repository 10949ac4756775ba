//! Who a peer is: its device certificate must chain through this fleet's issuing CA to the
//! pinned root (not merely to the root, which another CA may share), name a device of this
//! trust domain, and be for signing; its key-agreement certificate must come from the same
//! issuing CA, name the same SPIFFE ID, and be for key agreement only. A peer is identified by
//! issuing CA, serial and SPIFFE ID together, as the server identifies a caller.
//!
//! Plain functions of certificates and a time; no I/O. A certificate that checked out is
//! remembered (by its SHA-256, the envelope's `x5t`) for as long as it and the issuing CA are
//! valid, so a sender's chain is verified once per certificate rather than once per message.

use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use vouch_envelope::certificate_sha256;
use vouch_proto::validity::{insert_bounded, Validity};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest certificate considered, bytes.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;

/// How many verified device certificates (and, apart, key-agreement certificates) are
/// remembered; when full, the cache starts again empty.
const VERIFIED_CACHE_CAPACITY: usize = 4096;

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

/// What the cache holds: only results that checked out, each with the time window in which
/// it holds.
#[derive(Default)]
struct Verified {
    devices: HashMap<[u8; 32], (Validity, VerifiedDevice)>,
    /// By the key-agreement certificate's SHA-256; the SPIFFE ID it was checked against is
    /// kept with it, since the result holds for that device identity only.
    key_agreements: HashMap<[u8; 32], (String, Validity, VerifiedKeyAgreement)>,
}

/// A bounded cache of verified certificates, shared by every clone of its [`TrustAnchors`].
/// Revocation is not part of what is cached: callers check it against the CRL every time.
#[derive(Clone)]
struct VerifiedCache {
    capacity: usize,
    entries: Arc<Mutex<Verified>>,
}

impl VerifiedCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Arc::new(Mutex::new(Verified::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Verified> {
        // Nothing panics while holding the lock; if something did, the maps are still maps of
        // results that checked out.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn device(&self, x5t: &[u8; 32], now: i64) -> Option<VerifiedDevice> {
        self.lock()
            .devices
            .get(x5t)
            .filter(|(validity, _)| validity.contains(now))
            .map(|(_, device)| device.clone())
    }

    fn insert_device(&self, validity: Validity, device: &VerifiedDevice) {
        let capacity = self.capacity;
        insert_bounded(
            &mut self.lock().devices,
            capacity,
            device.x5t,
            (validity, device.clone()),
        );
    }

    fn key_agreement(
        &self,
        sha256: &[u8; 32],
        spiffe_id: &str,
        now: i64,
    ) -> Option<VerifiedKeyAgreement> {
        self.lock()
            .key_agreements
            .get(sha256)
            .filter(|(id, validity, _)| id == spiffe_id && validity.contains(now))
            .map(|(_, _, key)| key.clone())
    }

    fn insert_key_agreement(
        &self,
        sha256: [u8; 32],
        spiffe_id: &str,
        validity: Validity,
        key: &VerifiedKeyAgreement,
    ) {
        let capacity = self.capacity;
        insert_bounded(
            &mut self.lock().key_agreements,
            capacity,
            sha256,
            (spiffe_id.to_owned(), validity, key.clone()),
        );
    }
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.lock();
        f.debug_struct("VerifiedCache")
            .field("capacity", &self.capacity)
            .field("devices", &entries.devices.len())
            .field("key_agreements", &entries.key_agreements.len())
            .finish()
    }
}

/// What peers are checked against: the pinned root, this fleet's issuing CA and the trust
/// domain. Clones share one cache of verified certificates.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    root: Vec<u8>,
    issuing_ca: Vec<u8>,
    /// The issuing CA's validity: a chain through it verifies only within it.
    issuing_validity: Validity,
    trust_domain: String,
    verified: VerifiedCache,
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
        // The issuing CA itself must chain to the pinned root.
        let (_, issuing) = parse(&issuing_ca)?;
        let (_, root) = parse(pinned_root)?;
        issuing
            .verify_signature(Some(root.public_key()))
            .map_err(|_| {
                TrustError::Untrusted("the issuing CA is not signed by the root".into())
            })?;
        let issuing_validity = Validity::of(&issuing);
        Ok(Self {
            root: pinned_root.to_vec(),
            issuing_ca,
            issuing_validity,
            trust_domain: trust_domain.to_owned(),
            verified: VerifiedCache::new(VERIFIED_CACHE_CAPACITY),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Checks a peer's device certificate at `now` (Unix seconds). A certificate that checked
    /// out before is answered from the cache while `now` is within its (and the issuing CA's)
    /// validity; failures are not remembered. Revocation is the caller's to check.
    pub fn verify_device(&self, der: &[u8], now: i64) -> Result<VerifiedDevice, TrustError> {
        check_size(der)?;
        let x5t = certificate_sha256(der);
        if let Some(device) = self.verified.device(&x5t, now) {
            return Ok(device);
        }
        let (validity, device) = self.verify_device_uncached(der, x5t, now)?;
        self.verified.insert_device(validity, &device);
        Ok(device)
    }

    fn verify_device_uncached(
        &self,
        der: &[u8],
        x5t: [u8; 32],
        now: i64,
    ) -> Result<(Validity, VerifiedDevice), TrustError> {
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
        let device = VerifiedDevice {
            device_id,
            spiffe_id,
            serial: cert.raw_serial().to_vec(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            not_after: cert.validity().not_after.timestamp(),
            x5t,
        };
        Ok((Validity::of(&cert).within(self.issuing_validity), device))
    }

    /// Checks the key-agreement certificate `der` of `device` at `now`. Cached like
    /// [`Self::verify_device`], by the certificate's SHA-256 together with the SPIFFE ID of
    /// `device` (the one thing of the device the check reads).
    pub fn verify_key_agreement(
        &self,
        der: &[u8],
        device: &VerifiedDevice,
        now: i64,
    ) -> Result<VerifiedKeyAgreement, TrustError> {
        check_size(der)?;
        let sha256 = certificate_sha256(der);
        if let Some(key) = self.verified.key_agreement(&sha256, &device.spiffe_id, now) {
            return Ok(key);
        }
        let (validity, key) = self.verify_key_agreement_uncached(der, device, now)?;
        self.verified
            .insert_key_agreement(sha256, &device.spiffe_id, validity, &key);
        Ok(key)
    }

    fn verify_key_agreement_uncached(
        &self,
        der: &[u8],
        device: &VerifiedDevice,
        now: i64,
    ) -> Result<(Validity, VerifiedKeyAgreement), TrustError> {
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
        let key = VerifiedKeyAgreement {
            serial: cert.raw_serial().to_vec(),
            public_key,
            not_after: cert.validity().not_after.timestamp(),
        };
        Ok((Validity::of(&cert).within(self.issuing_validity), key))
    }

    /// `der` chains through this fleet's issuing CA (and no other intermediate) to the
    /// pinned root, and is valid at `now`.
    fn verify_chain(&self, der: &[u8], now: i64) -> Result<(), TrustError> {
        check_size(der)?;
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

fn check_size(der: &[u8]) -> Result<(), TrustError> {
    if der.len() > MAX_CERTIFICATE_BYTES {
        return Err(TrustError::Malformed("too large".into()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use time::OffsetDateTime;

    const TRUST_DOMAIN: &str = "fleet.example";
    /// The issuing CA is valid in [T0, T0 + 1000].
    const T0: i64 = 1_800_000_000;

    struct Pki {
        root: Certificate,
        issuing: Certificate,
        issuing_key: KeyPair,
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    fn pki() -> Pki {
        let ca_params = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
        };
        let root_key = KeyPair::generate().unwrap();
        let root = ca_params("test root").self_signed(&root_key).unwrap();
        let issuing_key = KeyPair::generate().unwrap();
        let mut issuing_params = ca_params("test issuing CA");
        issuing_params.not_before = at(T0);
        issuing_params.not_after = at(T0 + 1000);
        let issuing = issuing_params
            .signed_by(&issuing_key, &root, &root_key)
            .unwrap();
        Pki {
            root,
            issuing,
            issuing_key,
        }
    }

    fn anchors(pki: &Pki) -> TrustAnchors {
        let chain = format!("{}{}", pki.issuing.pem(), pki.root.pem());
        TrustAnchors::new(&chain, pki.root.der(), TRUST_DOMAIN).unwrap()
    }

    /// A certificate of device `id` (hex) for `usage`, valid in [not_before, not_after].
    fn leaf(
        pki: &Pki,
        id: &str,
        usage: KeyUsagePurpose,
        not_before: i64,
        not_after: i64,
    ) -> Vec<u8> {
        let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/device/{id}");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        params.key_usages = vec![usage];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        params
            .signed_by(
                &KeyPair::generate().unwrap(),
                &pki.issuing,
                &pki.issuing_key,
            )
            .unwrap()
            .der()
            .to_vec()
    }

    fn device(pki: &Pki, id: &str) -> Vec<u8> {
        leaf(
            pki,
            id,
            KeyUsagePurpose::DigitalSignature,
            T0 + 100,
            T0 + 500,
        )
    }

    fn cached(anchors: &TrustAnchors) -> (usize, usize) {
        let entries = anchors.verified.lock();
        (entries.devices.len(), entries.key_agreements.len())
    }

    fn untrusted<T: std::fmt::Debug>(result: Result<T, TrustError>) -> bool {
        matches!(result, Err(TrustError::Untrusted(_)))
    }

    #[test]
    fn a_cached_device_is_only_served_within_its_validity() {
        let pki = pki();
        let anchors = anchors(&pki);
        let der = device(&pki, "a1");
        let first = anchors.verify_device(&der, T0 + 200).unwrap();
        assert_eq!(cached(&anchors), (1, 0));
        assert_eq!(anchors.verify_device(&der, T0 + 300).unwrap(), first);
        // Both ends are included, as webpki includes them.
        assert_eq!(anchors.verify_device(&der, T0 + 100).unwrap(), first);
        assert_eq!(anchors.verify_device(&der, T0 + 500).unwrap(), first);
        // The entry is still there, but the certificate is not valid at these times.
        assert!(untrusted(anchors.verify_device(&der, T0 + 501)));
        assert!(untrusted(anchors.verify_device(&der, T0 + 99)));
        assert!(untrusted(anchors.verify_device(&der, -1)));
        assert_eq!(cached(&anchors), (1, 0));
    }

    #[test]
    fn a_cached_device_is_not_served_after_the_issuing_ca_expires() {
        let pki = pki();
        let anchors = anchors(&pki);
        // Outlives the issuing CA (valid to T0 + 1000).
        let der = leaf(
            &pki,
            "b2",
            KeyUsagePurpose::DigitalSignature,
            T0 + 100,
            T0 + 5000,
        );
        anchors.verify_device(&der, T0 + 200).unwrap();
        assert_eq!(cached(&anchors), (1, 0));
        assert!(untrusted(anchors.verify_device(&der, T0 + 1001)));
    }

    #[test]
    fn failures_are_not_cached() {
        let pki = pki();
        let anchors = anchors(&pki);
        let der = device(&pki, "c3");
        assert!(untrusted(anchors.verify_device(&der, T0 + 600)));
        assert_eq!(cached(&anchors), (0, 0));
        let device = anchors.verify_device(&der, T0 + 200).unwrap();

        // A certificate that is not a device's (wrong usage) fails every time.
        let ka_der = leaf(
            &pki,
            "c3",
            KeyUsagePurpose::KeyAgreement,
            T0 + 100,
            T0 + 500,
        );
        for _ in 0..2 {
            assert!(matches!(
                anchors.verify_device(&ka_der, T0 + 200),
                Err(TrustError::WrongUsage(_))
            ));
        }
        assert_eq!(cached(&anchors), (1, 0));

        // The key-agreement certificate: expired, then valid, then expired again.
        assert!(untrusted(anchors.verify_key_agreement(
            &ka_der,
            &device,
            T0 + 600
        )));
        assert_eq!(cached(&anchors), (1, 0));
        let key = anchors
            .verify_key_agreement(&ka_der, &device, T0 + 200)
            .unwrap();
        assert_eq!(cached(&anchors), (1, 1));
        assert_eq!(
            anchors
                .verify_key_agreement(&ka_der, &device, T0 + 300)
                .unwrap(),
            key
        );
        assert!(untrusted(anchors.verify_key_agreement(
            &ka_der,
            &device,
            T0 + 501
        )));
    }

    #[test]
    fn a_cached_key_agreement_certificate_holds_for_its_own_device_only() {
        let pki = pki();
        let anchors = anchors(&pki);
        let a = anchors
            .verify_device(&device(&pki, "aa"), T0 + 200)
            .unwrap();
        let b = anchors
            .verify_device(&device(&pki, "bb"), T0 + 200)
            .unwrap();
        let a_ka = leaf(
            &pki,
            "aa",
            KeyUsagePurpose::KeyAgreement,
            T0 + 100,
            T0 + 500,
        );
        // Refused for b before and after it is cached for a.
        assert_eq!(
            anchors.verify_key_agreement(&a_ka, &b, T0 + 200),
            Err(TrustError::NotTheSendersKey)
        );
        anchors.verify_key_agreement(&a_ka, &a, T0 + 200).unwrap();
        assert_eq!(cached(&anchors), (2, 1));
        assert_eq!(
            anchors.verify_key_agreement(&a_ka, &b, T0 + 200),
            Err(TrustError::NotTheSendersKey)
        );
        anchors.verify_key_agreement(&a_ka, &a, T0 + 200).unwrap();
    }

    #[test]
    fn clones_share_one_bounded_cache() {
        let pki = pki();
        let mut anchors = anchors(&pki);
        anchors.verified = VerifiedCache::new(2);
        let clone = anchors.clone();
        anchors
            .verify_device(&device(&pki, "01"), T0 + 200)
            .unwrap();
        assert_eq!(cached(&clone), (1, 0));
        clone.verify_device(&device(&pki, "02"), T0 + 200).unwrap();
        assert_eq!(cached(&anchors), (2, 0));
        // Full: a third certificate starts the cache again.
        let third = device(&pki, "03");
        let verified = anchors.verify_device(&third, T0 + 200).unwrap();
        assert_eq!(cached(&clone), (1, 0));
        assert_eq!(clone.verify_device(&third, T0 + 200).unwrap(), verified);
    }
}
