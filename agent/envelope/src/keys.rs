//! The keys an envelope is made and opened with: the sender's signing key and certificates, and
//! the static P-256 key-agreement keys of both devices.

use crate::labels::{CERT_HASH_LEN, MAX_SPIFFE_ID_LEN};
use crate::EnvelopeError;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use ring::digest;
use ring::signature::{EcdsaKeyPair, KeyPair};
use zeroize::Zeroizing;

/// Length of an uncompressed SEC1 P-256 point: `04 || x || y`.
pub(crate) const SEC1_UNCOMPRESSED_LEN: usize = 65;

/// SHA-256 of a certificate's DER: the envelope's `x5t` value and static key id.
pub fn certificate_sha256(certificate_der: &[u8]) -> [u8; CERT_HASH_LEN] {
    let mut out = [0u8; CERT_HASH_LEN];
    // INVARIANT: a SHA-256 digest is 32 bytes.
    out.copy_from_slice(digest::digest(&digest::SHA256, certificate_der).as_ref());
    out
}

/// Parses an uncompressed SEC1 P-256 point (as found in a certificate's SubjectPublicKeyInfo).
pub(crate) fn parse_public_key(sec1: &[u8]) -> Result<p256::PublicKey, EnvelopeError> {
    if sec1.len() != SEC1_UNCOMPRESSED_LEN || sec1.first() != Some(&0x04) {
        return Err(EnvelopeError::InvalidKey(
            "key-agreement public key is not an uncompressed P-256 point",
        ));
    }
    p256::PublicKey::from_sec1_bytes(sec1)
        .map_err(|_| EnvelopeError::InvalidKey("key-agreement public key is not on P-256"))
}

fn check_spiffe_id(id: &str) -> Result<(), EnvelopeError> {
    if id.is_empty() || id.len() > MAX_SPIFFE_ID_LEN {
        return Err(EnvelopeError::InvalidRequest(
            "a SPIFFE ID must have 1 to 2048 bytes",
        ));
    }
    Ok(())
}

/// A device's static P-256 key-agreement private key (the key of its key-agreement certificate,
/// never its signing key), with its public point computed once.
pub struct KeyAgreementKey {
    secret: p256::SecretKey,
    public: [u8; SEC1_UNCOMPRESSED_LEN],
}

impl KeyAgreementKey {
    /// Reads a PKCS#8 DER private key (as the CA issues and the agent stores it).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, EnvelopeError> {
        let secret = p256::SecretKey::from_pkcs8_der(der)
            .map_err(|_| EnvelopeError::InvalidKey("not a PKCS#8 P-256 private key"))?;
        Self::from_secret(secret)
    }

    /// Reads a raw 32-byte big-endian private scalar (a COSE_Key's `d`).
    pub fn from_scalar(scalar: &[u8]) -> Result<Self, EnvelopeError> {
        if scalar.len() != 32 {
            return Err(EnvelopeError::InvalidKey(
                "a P-256 private scalar has 32 bytes",
            ));
        }
        let secret = p256::SecretKey::from_slice(scalar)
            .map_err(|_| EnvelopeError::InvalidKey("not a valid P-256 private scalar"))?;
        Self::from_secret(secret)
    }

    fn from_secret(secret: p256::SecretKey) -> Result<Self, EnvelopeError> {
        let point = secret.public_key().to_encoded_point(false);
        let public = <[u8; SEC1_UNCOMPRESSED_LEN]>::try_from(point.as_bytes())
            .map_err(|_| EnvelopeError::InvalidKey("public point is not 65 bytes"))?;
        Ok(Self { secret, public })
    }

    /// The public point, uncompressed SEC1 (65 bytes).
    pub fn public_key(&self) -> &[u8; SEC1_UNCOMPRESSED_LEN] {
        &self.public
    }

    /// Static-static ECDH with `peer`: the x coordinate of the shared point.
    pub(crate) fn agree(&self, peer: &p256::PublicKey) -> Zeroizing<[u8; 32]> {
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(shared.raw_secret_bytes());
        out
    }
}

impl std::fmt::Debug for KeyAgreementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgreementKey")
            .field("public", &Hex(&self.public))
            .finish_non_exhaustive()
    }
}

struct Hex<'a>(&'a [u8]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What a device seals with: its SPIFFE ID, its device signing key and certificate (for the
/// signature and `x5t`/`x5chain`), and its key-agreement key and certificate (for ECDH and the
/// static key id). Built once per certificate set; the certificate hashes are computed here.
pub struct SenderKeys {
    spiffe_id: String,
    signing_key: EcdsaKeyPair,
    device_certificate: Vec<u8>,
    device_certificate_sha256: [u8; CERT_HASH_LEN],
    issuers: Vec<Vec<u8>>,
    key_agreement_key: KeyAgreementKey,
    key_agreement_certificate: Vec<u8>,
    key_agreement_certificate_sha256: [u8; CERT_HASH_LEN],
}

impl SenderKeys {
    /// `signing_key` must be a P-256 key made for `ECDSA_P256_SHA256_FIXED_SIGNING` (COSE
    /// signatures are `r || s`); certificates are DER.
    pub fn new(
        spiffe_id: impl Into<String>,
        signing_key: EcdsaKeyPair,
        device_certificate: Vec<u8>,
        key_agreement_key: KeyAgreementKey,
        key_agreement_certificate: Vec<u8>,
    ) -> Result<Self, EnvelopeError> {
        let spiffe_id = spiffe_id.into();
        check_spiffe_id(&spiffe_id)?;
        if signing_key.public_key().as_ref().len() != SEC1_UNCOMPRESSED_LEN {
            return Err(EnvelopeError::InvalidKey(
                "the signing key is not a P-256 key",
            ));
        }
        Ok(Self {
            spiffe_id,
            signing_key,
            device_certificate_sha256: certificate_sha256(&device_certificate),
            device_certificate,
            issuers: Vec::new(),
            key_agreement_key,
            key_agreement_certificate_sha256: certificate_sha256(&key_agreement_certificate),
            key_agreement_certificate,
        })
    }

    /// Adds the issuers of the device certificate (DER, nearest first), sent after it in
    /// `x5chain` when a seal request asks for the chain.
    pub fn with_issuers(mut self, issuers: Vec<Vec<u8>>) -> Self {
        self.issuers = issuers;
        self
    }

    /// The sender's SPIFFE ID, sent as `iss` and as PartyU identity.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    pub(crate) fn signing_key(&self) -> &EcdsaKeyPair {
        &self.signing_key
    }

    /// The device certificate, DER.
    pub fn device_certificate(&self) -> &[u8] {
        &self.device_certificate
    }

    /// SHA-256 of the device certificate: the `x5t` value.
    pub fn device_certificate_sha256(&self) -> &[u8; CERT_HASH_LEN] {
        &self.device_certificate_sha256
    }

    /// The device certificate's issuers sent in `x5chain`.
    pub fn issuers(&self) -> &[Vec<u8>] {
        &self.issuers
    }

    /// The key-agreement key.
    pub fn key_agreement_key(&self) -> &KeyAgreementKey {
        &self.key_agreement_key
    }

    /// The key-agreement certificate, DER.
    pub fn key_agreement_certificate(&self) -> &[u8] {
        &self.key_agreement_certificate
    }

    /// SHA-256 of the key-agreement certificate: the static key id.
    pub fn key_agreement_certificate_sha256(&self) -> &[u8; CERT_HASH_LEN] {
        &self.key_agreement_certificate_sha256
    }
}

impl std::fmt::Debug for SenderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeys")
            .field("spiffe_id", &self.spiffe_id)
            .field("x5t", &Hex(&self.device_certificate_sha256))
            .field(
                "static_key_id",
                &Hex(&self.key_agreement_certificate_sha256),
            )
            .finish_non_exhaustive()
    }
}

/// Whom an envelope is sealed to: the target's SPIFFE ID (`aud`, PartyV identity) and the
/// public key of its key-agreement certificate.
#[derive(Debug, Clone)]
pub struct RecipientKeys {
    spiffe_id: String,
    key_agreement_public_key: [u8; SEC1_UNCOMPRESSED_LEN],
}

impl RecipientKeys {
    /// `key_agreement_public_key` is the uncompressed SEC1 point of the target's key-agreement
    /// certificate's SubjectPublicKeyInfo; it is checked to be on P-256.
    pub fn new(
        spiffe_id: impl Into<String>,
        key_agreement_public_key: &[u8],
    ) -> Result<Self, EnvelopeError> {
        let spiffe_id = spiffe_id.into();
        check_spiffe_id(&spiffe_id)?;
        parse_public_key(key_agreement_public_key)?;
        let key = <[u8; SEC1_UNCOMPRESSED_LEN]>::try_from(key_agreement_public_key)
            .map_err(|_| EnvelopeError::InvalidKey("public key is not 65 bytes"))?;
        Ok(Self {
            spiffe_id,
            key_agreement_public_key: key,
        })
    }

    /// The target's SPIFFE ID.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The target's key-agreement public key, uncompressed SEC1.
    pub fn key_agreement_public_key(&self) -> &[u8; SEC1_UNCOMPRESSED_LEN] {
        &self.key_agreement_public_key
    }
}
