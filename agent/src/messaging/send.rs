//! The sending side: this device's signing and key-agreement keys, a session id chosen at
//! start and a sequence number that only grows within it, sealing each message to a checked
//! peer.

use super::peers::Peer;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::sync::atomic::{AtomicU64, Ordering};
use vouch_envelope::{
    seal_with_id, EnvelopeError, KeyAgreementKey, RecipientKeys, SealRequest, SenderKeys,
    SharedSecretCache,
};

/// How long a message is valid after it is sealed, seconds.
pub const MESSAGE_LIFETIME_SECS: u64 = 120;

/// Why a message could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// This device's keys or certificates do not load.
    #[error("this device's credentials do not load: {0}")]
    Credentials(String),
    /// Sealing failed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// This device's credentials, as the sender uses them (PEM, as in the state directory).
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The SPIFFE ID.
    pub spiffe_id: &'a str,
    /// The device key (PKCS#8).
    pub key_pem: &'a str,
    /// The device certificate (first block) and its chain.
    pub cert_pem: &'a str,
    /// The key-agreement key (PKCS#8).
    pub ka_key_pem: &'a str,
    /// The key-agreement certificate (first block).
    pub ka_cert_pem: &'a str,
}

/// A sealed message: the envelope, its claim id (`cti`) and its sequence number.
#[derive(Debug)]
pub struct Sealed {
    pub envelope: Vec<u8>,
    pub cti: [u8; 16],
    pub seq: u64,
}

/// Seals messages from this device.
pub struct Outbox {
    sender: SenderKeys,
    session_id: [u8; 16],
    next_seq: AtomicU64,
    cache: SharedSecretCache,
    rng: SystemRandom,
}

fn der(pem_text: &str, tag: &str, what: &str) -> Result<Vec<u8>, SendError> {
    pem::parse_many(pem_text)
        .ok()
        .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == tag))
        .map(pem::Pem::into_contents)
        .ok_or_else(|| SendError::Credentials(format!("{what} holds no {tag}")))
}

impl Outbox {
    /// An outbox for `credentials`, with a fresh random session id.
    pub fn new(credentials: &Credentials<'_>) -> Result<Self, SendError> {
        let rng = SystemRandom::new();
        let bad = |e: &dyn std::fmt::Display| SendError::Credentials(e.to_string());
        let key_der = der(credentials.key_pem, "PRIVATE KEY", "the device key")?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der, &rng)
            .map_err(|e| bad(&e))?;
        let ka_der = der(
            credentials.ka_key_pem,
            "PRIVATE KEY",
            "the key-agreement key",
        )?;
        let ka = KeyAgreementKey::from_pkcs8_der(&ka_der).map_err(|e| bad(&e))?;
        let cert = der(
            credentials.cert_pem,
            "CERTIFICATE",
            "the device certificate",
        )?;
        let ka_cert = der(
            credentials.ka_cert_pem,
            "CERTIFICATE",
            "the key-agreement certificate",
        )?;
        let sender = SenderKeys::new(credentials.spiffe_id, key, cert, ka, ka_cert)?;
        let mut session_id = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut session_id)
            .map_err(|_| SendError::Credentials("no randomness".into()))?;
        Ok(Self {
            sender,
            session_id,
            next_seq: AtomicU64::new(1),
            cache: SharedSecretCache::new(1024),
            rng,
        })
    }

    /// The sequence number the next sealed message gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }

    /// Seals `payload` of `data_type` to `peer` at `now` (Unix seconds), with the next
    /// sequence number; `include_chain` carries both certificates (for a first contact or a
    /// broker).
    pub fn seal(
        &self,
        peer: &Peer,
        data_type: &str,
        payload: &[u8],
        now: u64,
        include_chain: bool,
    ) -> Result<Sealed, SendError> {
        let recipient = RecipientKeys::new(&peer.device.spiffe_id, &peer.key_agreement.public_key)?;
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let (envelope, cti) = seal_with_id(
            &SealRequest {
                sender: &self.sender,
                recipient: &recipient,
                data_type,
                session_id: &self.session_id,
                seq,
                iat: now,
                exp: now + MESSAGE_LIFETIME_SECS,
                payload,
                include_chain,
            },
            &self.rng,
            &self.cache,
        )?;
        Ok(Sealed { envelope, cti, seq })
    }
}
