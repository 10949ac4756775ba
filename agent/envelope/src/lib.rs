//! Vouch's message envelope: a COSE_Sign1 (ES256, the sender's device key) around a COSE_Encrypt
//! (A256GCM, one ECDH-SS + HKDF-256 recipient between the two devices' key-agreement keys),
//! standard COSE (RFC 9052/9053). The format is described in `docs/envelope.md`.
//!
//! This crate is a pure core: it does no I/O, reads no clock and owns no random generator. The
//! current time and a [`RandomSource`] come in as parameters.
//!
//! Sending is one call, [`seal`]. Receiving is a chain of separate steps, because the caller runs
//! its own checks between them, in this order:
//!
//! 1. [`Envelope::parse`]: size limit, then strict decoding (no signature check yet);
//! 2. the caller verifies the sender's certificate chain (the certificate whose SHA-256 is
//!    [`EnvelopeHeader::sender_certificate_sha256`], and whose SPIFFE ID must be the `iss`) and
//!    its revocation;
//! 3. [`ParsedEnvelope::verify_signature`] with that certificate's public key;
//! 4. [`SignedEnvelope::check_audience`] and [`SignedEnvelope::check_fresh`];
//! 5. the caller checks replay (issuer, session id, sequence number) and ingress policy;
//! 6. [`SignedEnvelope::decrypt`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod cbor;
pub mod direct;
mod error;
pub mod kdf;
mod keys;
pub mod labels;
mod open;
mod random;
mod seal;

pub use cache::SharedSecretCache;
pub use error::EnvelopeError;
pub use keys::{certificate_sha256, KeyAgreementKey, RecipientKeys, SenderKeys};
pub use open::{Claims, Envelope, EnvelopeHeader, ParsedEnvelope, RecipientOpen, SignedEnvelope};
pub use random::RandomSource;
pub use seal::{seal, seal_with_id, SealRequest};
