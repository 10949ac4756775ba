//! Why an envelope was refused, or could not be made.

use thiserror::Error;

/// Every reason this crate refuses an envelope or fails to seal one. A receiver logs
/// [`EnvelopeError::reason`], a stable code, and may count refusals by it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The envelope is longer than the receiver's limit; nothing of it was decoded.
    #[error("envelope is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The bytes are not an envelope of this format (bad CBOR, a missing or unexpected field,
    /// a wrong type or length, trailing bytes).
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A header names an algorithm this format does not use.
    #[error("unsupported algorithm in the {0}")]
    UnsupportedAlgorithm(&'static str),
    /// The protected header marks as critical a parameter this crate does not understand.
    #[error("unknown critical header parameter `{0}`")]
    UnknownCriticalHeader(String),
    /// The signature does not verify with the sender's device key.
    #[error("signature does not verify with the sender's device key")]
    BadSignature,
    /// The envelope is addressed to another device.
    #[error("envelope is addressed to `{found}`, not to `{expected}`")]
    WrongAudience {
        /// This device's SPIFFE ID.
        expected: String,
        /// The envelope's `aud`.
        found: String,
    },
    /// The envelope's `exp` has passed (with the allowed clock skew).
    #[error("envelope expired at {exp} (now {now})")]
    Expired {
        /// The envelope's `exp`, unix seconds.
        exp: u64,
        /// The receiver's time.
        now: u64,
    },
    /// The envelope's `iat` is in the future (beyond the allowed clock skew).
    #[error("envelope issued at {iat}, in the future (now {now})")]
    NotYetValid {
        /// The envelope's `iat`, unix seconds.
        iat: u64,
        /// The receiver's time.
        now: u64,
    },
    /// `exp - iat` is longer than the receiver accepts.
    #[error("envelope lifetime of {lifetime} s is longer than the maximum of {max} s")]
    LifetimeTooLong {
        /// `exp - iat`, seconds.
        lifetime: u64,
        /// The receiver's maximum.
        max: u64,
    },
    /// A key or certificate does not match the hash the envelope names for it.
    #[error("key mismatch: {0}")]
    KeyMismatch(&'static str),
    /// A key-agreement party identity differs from the signed claim it must equal.
    #[error("key-agreement identity differs from the signed `{0}`")]
    IdentityMismatch(&'static str),
    /// AES-GCM refused the ciphertext: wrong key, wrong additional data, or altered bytes.
    #[error("decryption failed")]
    DecryptionFailed,
    /// A key given by the caller is not usable (not a P-256 key in the expected encoding).
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// A seal request is not valid (empty or overlong identifiers, `exp` not after `iat`).
    #[error("invalid seal request: {0}")]
    InvalidRequest(&'static str),
    /// The random source failed.
    #[error("random source failed")]
    RandomFailed,
    /// Signing failed.
    #[error("signing failed")]
    SigningFailed,
    /// A structure this crate built could not be encoded.
    #[error("encoding failed")]
    EncodingFailed,
}

impl EnvelopeError {
    /// A stable, machine-readable code for logs and metrics (`snake_case`, never reworded).
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::TooLarge { .. } => "too_large",
            EnvelopeError::Malformed(_) => "malformed",
            EnvelopeError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            EnvelopeError::UnknownCriticalHeader(_) => "unknown_critical_header",
            EnvelopeError::BadSignature => "bad_signature",
            EnvelopeError::WrongAudience { .. } => "wrong_audience",
            EnvelopeError::Expired { .. } => "expired",
            EnvelopeError::NotYetValid { .. } => "not_yet_valid",
            EnvelopeError::LifetimeTooLong { .. } => "lifetime_too_long",
            EnvelopeError::KeyMismatch(_) => "key_mismatch",
            EnvelopeError::IdentityMismatch(_) => "identity_mismatch",
            EnvelopeError::DecryptionFailed => "decryption_failed",
            EnvelopeError::InvalidKey(_) => "invalid_key",
            EnvelopeError::InvalidRequest(_) => "invalid_seal_request",
            EnvelopeError::RandomFailed => "random_failed",
            EnvelopeError::SigningFailed => "signing_failed",
            EnvelopeError::EncodingFailed => "encoding_failed",
        }
    }
}
