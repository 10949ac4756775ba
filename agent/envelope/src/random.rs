//! Where the envelope's random values come from: passed in by the caller, never global.

use crate::EnvelopeError;
use ring::rand::{SecureRandom, SystemRandom};

/// The randomness [`crate::seal`] needs. Production code passes [`SystemRandom`]; tests pass a
/// source fed fixed bytes so that everything but the signature is reproducible.
///
/// ring's `SecureRandom` is sealed (no implementation outside ring), so this crate's own values
/// (claim id, HKDF salt, AES-GCM IV) come through [`RandomSource::fill`], and only ECDSA's
/// nonce comes from [`RandomSource::signing_rng`].
pub trait RandomSource {
    /// Fills `dest` with unpredictable bytes. Called in a documented order: the claim id
    /// (`cti`, 16 bytes), the HKDF salt (16 bytes), the AES-GCM IV (12 bytes).
    fn fill(&self, dest: &mut [u8]) -> Result<(), EnvelopeError>;

    /// The generator ring's ECDSA signing draws its nonce from.
    fn signing_rng(&self) -> &dyn SecureRandom;
}

impl RandomSource for SystemRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), EnvelopeError> {
        SecureRandom::fill(self, dest).map_err(|_| EnvelopeError::RandomFailed)
    }

    fn signing_rng(&self) -> &dyn SecureRandom {
        self
    }
}
