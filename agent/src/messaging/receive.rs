//! The receiver's checks, in order, each failing closed with a reason: size → the sender's
//! device certificate chains through this fleet's issuing CA → it is not revoked (per a
//! current CRL) → the signature → the message is for me → fresh → not a replay → ingress
//! policy allows the sender and data type → the sender's key-agreement certificate is its own,
//! from this CA and not revoked → decrypt. Only then is the window advanced and the payload
//! handed over. A plain function of its inputs; the caller holds the caches and the clock.

use super::replay::{Replay, ReplayGuard};
use super::revocation::{CrlError, RevocationList};
use super::trust::{TrustAnchors, TrustError, VerifiedDevice};
use vouch_envelope::{
    Envelope, EnvelopeError, KeyAgreementKey, ParsedEnvelope, RecipientOpen, SharedSecretCache,
};

/// Limits a receiver applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest envelope, bytes.
    pub max_len: usize,
    /// Clock skew tolerated on `iat` and `exp`, seconds.
    pub max_skew: u64,
    /// Longest `exp - iat` accepted, seconds.
    pub max_lifetime: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_len: 1024 * 1024,
            max_skew: 60,
            max_lifetime: 300,
        }
    }
}

/// What the receiver knows and holds.
pub struct Receiver<'a> {
    /// Root, issuing CA and trust domain.
    pub anchors: &'a TrustAnchors,
    /// The current CRL; without one nothing is accepted.
    pub crl: Option<&'a RevocationList>,
    /// This device's SPIFFE ID.
    pub me: &'a str,
    /// This device's key-agreement key.
    pub my_key: &'a KeyAgreementKey,
    /// ECDH shared secrets.
    pub cache: &'a SharedSecretCache,
    /// Certificates known from the peer directory, by SHA-256 (device certificates by their
    /// `x5t`, key-agreement certificates by their static key id), for envelopes that do not
    /// carry them.
    pub known: &'a dyn Fn(&[u8; 32]) -> Option<Vec<u8>>,
    /// Limits.
    pub limits: Limits,
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Who sent it.
    pub sender: VerifiedDevice,
    /// Its data type.
    pub data_type: String,
    /// The plaintext.
    pub payload: Vec<u8>,
    /// When it was sent (Unix seconds, the sender's word).
    pub sent_at: u64,
    /// Its message id (`cti`), hex.
    pub message_id: String,
}

/// Why a message is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Larger than the limit.
    #[error("the message is larger than {0} bytes")]
    TooLarge(usize),
    /// Not an envelope of ours.
    #[error("not a valid envelope: {0}")]
    Malformed(EnvelopeError),
    /// Its sender's certificate is neither in it nor known.
    #[error("the sender's certificate is not in the message and not known")]
    UnknownSender,
    /// The sender's certificate is not trusted.
    #[error("the sender is not trusted: {0}")]
    Untrusted(TrustError),
    /// No current CRL: nothing is accepted.
    #[error("no current CRL: {0}")]
    NoCurrentCrl(CrlError),
    /// The sender's certificate (or its key-agreement certificate) is revoked.
    #[error("the sender's certificate is revoked")]
    Revoked,
    /// The signature does not verify with the sender's certificate.
    #[error("the signature does not verify")]
    BadSignature(EnvelopeError),
    /// Addressed to another device.
    #[error("the message is for another device: {0}")]
    WrongAudience(EnvelopeError),
    /// Expired, not yet valid, or valid too long.
    #[error("the message is not fresh: {0}")]
    NotFresh(EnvelopeError),
    /// Seen before.
    #[error("{0}")]
    Replayed(Replay),
    /// Ingress policy does not allow it.
    #[error("policy denies it: {0}")]
    PolicyDenied(String),
    /// The key-agreement certificate is missing, not the sender's or not trusted.
    #[error("the sender's key-agreement certificate is not acceptable: {0}")]
    KeyAgreement(String),
    /// Decryption failed (tampered, moved, or sealed to another key).
    #[error("decryption failed: {0}")]
    DecryptionFailed(EnvelopeError),
    /// The replay window could not be saved: the message is not handed over.
    #[error("the replay window cannot be saved: {0}")]
    Storage(String),
}

impl Refusal {
    /// A stable word for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnknownSender => "unknown_sender",
            Self::Untrusted(_) => "untrusted_sender",
            Self::NoCurrentCrl(_) => "no_current_crl",
            Self::Revoked => "revoked",
            Self::BadSignature(_) => "bad_signature",
            Self::WrongAudience(_) => "wrong_audience",
            Self::NotFresh(_) => "not_fresh",
            Self::Replayed(_) => "replayed",
            Self::PolicyDenied(_) => vouch_proto::ProblemCode::PolicyDenied.as_str(),
            Self::KeyAgreement(_) => "key_agreement",
            Self::DecryptionFailed(_) => "decryption_failed",
            Self::Storage(_) => "storage",
        }
    }
}

/// The first two checks of an incoming envelope: the size limit, then its structure.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<ParsedEnvelope, Refusal> {
    if bytes.len() > limits.max_len {
        return Err(Refusal::TooLarge(limits.max_len));
    }
    Envelope::parse(bytes, limits.max_len).map_err(Refusal::Malformed)
}

impl Receiver<'_> {
    /// Checks `bytes` at `now` (Unix seconds), asks `policy` whether the verified sender may
    /// send this data type (and payload size, from the ciphertext) to me, and returns the
    /// plaintext; records the sequence number in `replay` only when everything passed.
    pub fn receive(
        &self,
        bytes: &[u8],
        now: i64,
        replay: &mut ReplayGuard,
        policy: &dyn Fn(&VerifiedDevice, &str, usize) -> Result<(), String>,
    ) -> Result<Delivered, Refusal> {
        self.receive_parsed(parse(bytes, &self.limits)?, now, replay, policy)
    }

    /// [`Self::receive`] of an envelope [`parse`] took (so that a caller that looked
    /// at it first does not parse it twice).
    pub fn receive_parsed(
        &self,
        parsed: ParsedEnvelope,
        now: i64,
        replay: &mut ReplayGuard,
        policy: &dyn Fn(&VerifiedDevice, &str, usize) -> Result<(), String>,
    ) -> Result<Delivered, Refusal> {
        let x5t = *parsed.header().sender_certificate_sha256();
        let device_der = match parsed.certificates().first() {
            Some(der) => der.clone(),
            None => (self.known)(&x5t).ok_or(Refusal::UnknownSender)?,
        };
        let sender = self
            .anchors
            .verify_device(&device_der, now)
            .map_err(Refusal::Untrusted)?;
        if sender.x5t != x5t {
            return Err(Refusal::UnknownSender);
        }
        self.not_revoked(&sender.serial, now)?;
        let signed = parsed
            .verify_signature(&sender.public_key)
            .map_err(Refusal::BadSignature)?;
        // The signed `iss` must be the certificate's SPIFFE ID.
        if signed.header().claims().iss() != sender.spiffe_id {
            return Err(Refusal::Untrusted(TrustError::NotTheSendersKey));
        }
        signed
            .check_audience(self.me)
            .map_err(Refusal::WrongAudience)?;
        let now_u = u64::try_from(now).unwrap_or(0);
        signed
            .check_fresh(now_u, self.limits.max_skew, self.limits.max_lifetime)
            .map_err(Refusal::NotFresh)?;
        let header = signed.header().clone();
        let (iss, session, seq) = (header.claims().iss(), header.session_id(), header.seq());
        replay.check(iss, session, seq).map_err(Refusal::Replayed)?;
        // AES-GCM's ciphertext is the plaintext and a 16-byte tag.
        let size = signed
            .parsed()
            .inner()
            .ciphertext()
            .len()
            .saturating_sub(16);
        policy(&sender, header.data_type(), size).map_err(Refusal::PolicyDenied)?;

        let key_id = *signed.parsed().sender_key_agreement_key_id();
        let ka_der = match signed.parsed().sender_key_agreement_certificate() {
            Some(der) => der.to_vec(),
            None => (self.known)(&key_id)
                .ok_or_else(|| Refusal::KeyAgreement("not in the message and not known".into()))?,
        };
        let ka = self
            .anchors
            .verify_key_agreement(&ka_der, &sender, now)
            .map_err(|e| Refusal::KeyAgreement(e.to_string()))?;
        self.not_revoked(&ka.serial, now)?;
        let payload = signed
            .decrypt(
                &RecipientOpen {
                    my_spiffe_id: self.me,
                    my_key: self.my_key,
                    sender_key_agreement_certificate: &ka_der,
                    sender_key_agreement_public_key: &ka.public_key,
                },
                self.cache,
            )
            .map_err(Refusal::DecryptionFailed)?;
        replay.record(iss, session, seq).map_err(Refusal::Storage)?;
        Ok(Delivered {
            sender,
            data_type: header.data_type().to_owned(),
            payload,
            sent_at: header.claims().iat(),
            message_id: hex::encode(header.claims().cti()),
        })
    }

    fn not_revoked(&self, serial: &[u8], now: i64) -> Result<(), Refusal> {
        let crl = self.crl.ok_or(Refusal::NoCurrentCrl(CrlError::Stale))?;
        match crl.check(serial, now) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::Revoked),
            Err(e) => Err(Refusal::NoCurrentCrl(e)),
        }
    }
}
