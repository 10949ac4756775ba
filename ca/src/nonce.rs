//! Attestation nonces that need no storage until they are used.
//!
//! A challenge must be fresh, single-use, bound to the device it was issued to and to the PCRs
//! it asks for. Storing each nonce when it is issued costs a database write per challenge,
//! on the single SQLite writer, for a value that is only worth anything if it comes back.
//! Instead the server authenticates what it would have stored, inside the nonce itself (the
//! "stateless cookie" pattern of TCP SYN cookies and DTLS/QUIC retry tokens):
//!
//! ```text
//! nonce (32 bytes) = expires_at (8, big-endian Unix seconds) || order (8) || tag (16)
//! order = issue time's nanoseconds within its second (4, big-endian) || random (4)
//! tag = HMAC-SHA256(nonce key, "vouch attestation nonce v1" || len || device id
//!                              || len || PCR list || expires_at || order)[..16]
//! ```
//!
//! The 32 bytes are what the TPM quotes as qualifying data, unchanged from the agent's view.
//! The 128-bit tag binds a nonce to the device and the PCR selection, makes a nonce the
//! server did not issue fail, and makes every nonce unpredictable to anyone without the key.
//! A nonce is used up when its result is recorded: the attestation history has a unique
//! nonce column, so of two results for one nonce exactly one is recorded.
//!
//! The order field puts nonces in the order they were issued (expiry first, then the
//! nanoseconds), with 32 random bits to tell apart nonces of the same nanosecond. It is
//! covered by the tag but not checked otherwise. It is there for the database: the history's
//! unique index on the nonce then grows at its end, where a batch of results touches a page
//! or two, instead of at one random page per result (measured with `benches/attest.rs`).
//!
//! The key is derived with HKDF-SHA256 from the bootstrap-token key in the data directory, so
//! replicas that share a data directory's keys accept each other's nonces, and nothing new
//! has to be provisioned.

use ring::hkdf;
use ring::hmac;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

/// Length of a nonce in bytes.
pub(crate) const NONCE_LEN: usize = 32;

/// Bytes of the truncated HMAC tag.
const TAG_LEN: usize = 16;

/// Domain separation of the tag (and version of the format).
const LABEL: &[u8] = b"vouch attestation nonce v1";

/// HKDF info of the nonce key, distinct from every other use of the same secret.
const KEY_INFO: &[u8] = b"vouch attestation nonce key v1";

/// The key that issues and checks attestation nonces.
pub struct NonceKey(hmac::Key);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// Why a nonce is refused (the API answers all of them alike: `nonce_invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefusal {
    /// Not 32 bytes.
    Length,
    /// Its tag does not match: not issued by this server, to this device, for these PCRs.
    Tag,
    /// Past its expiry.
    Expired,
}

/// The output length of the HKDF expansion: one HMAC-SHA256 key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl NonceKey {
    /// Derives the nonce key from a server secret (the bootstrap-token key).
    pub fn derive(secret: &[u8]) -> Result<Self, ring::error::Unspecified> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, LABEL).extract(secret);
        let mut key = [0u8; 32];
        prk.expand(&[KEY_INFO], KeyLen)?.fill(&mut key)?;
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    fn tag(
        &self,
        device_id: &str,
        pcrs: &[u8],
        expiry: &[u8; 8],
        order: &[u8; 8],
    ) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(LABEL);
        // Lengths first, so that no two (device, PCRs) pairs feed the same bytes.
        ctx.update(&(device_id.len() as u64).to_be_bytes());
        ctx.update(device_id.as_bytes());
        ctx.update(&(pcrs.len() as u64).to_be_bytes());
        ctx.update(pcrs);
        ctx.update(expiry);
        ctx.update(order);
        let mut tag = [0u8; TAG_LEN];
        for (out, byte) in tag.iter_mut().zip(ctx.sign().as_ref()) {
            *out = *byte;
        }
        tag
    }

    /// A fresh nonce for `device_id` to quote `pcrs` before `expires_at` (Unix seconds),
    /// issued at `issued_nanos` nanoseconds into its second.
    pub fn issue(
        &self,
        rng: &dyn SecureRandom,
        device_id: &str,
        pcrs: &[u8],
        expires_at: i64,
        issued_nanos: u32,
    ) -> Result<[u8; NONCE_LEN], ring::error::Unspecified> {
        let expiry = expires_at.to_be_bytes();
        let mut random = [0u8; 4];
        rng.fill(&mut random)?;
        let mut order = [0u8; 8];
        for (out, byte) in order
            .iter_mut()
            .zip(issued_nanos.to_be_bytes().iter().chain(&random))
        {
            *out = *byte;
        }
        let tag = self.tag(device_id, pcrs, &expiry, &order);
        let mut nonce = [0u8; NONCE_LEN];
        for (out, byte) in nonce
            .iter_mut()
            .zip(expiry.iter().chain(&order).chain(&tag))
        {
            *out = *byte;
        }
        Ok(nonce)
    }

    /// Whether `nonce` was issued by this key to `device_id` for `pcrs` and is unexpired at
    /// `now`. The tag is compared in constant time. (Whether it was used already is for the
    /// history's unique nonce column to say.)
    pub fn check(
        &self,
        nonce: &[u8],
        device_id: &str,
        pcrs: &[u8],
        now: i64,
    ) -> Result<(), NonceRefusal> {
        if nonce.len() != NONCE_LEN {
            return Err(NonceRefusal::Length);
        }
        let (expiry, rest) = nonce.split_first_chunk::<8>().ok_or(NonceRefusal::Length)?;
        let (order, tag) = rest.split_first_chunk::<8>().ok_or(NonceRefusal::Length)?;
        let expected = self.tag(device_id, pcrs, expiry, order);
        if !bool::from(expected.as_slice().ct_eq(tag)) {
            return Err(NonceRefusal::Tag);
        }
        if i64::from_be_bytes(*expiry) <= now {
            return Err(NonceRefusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use ring::rand::SystemRandom;

    const PCRS: &[u8] = &[0, 1, 2, 7];

    fn key() -> NonceKey {
        NonceKey::derive(&[7u8; 32]).unwrap()
    }

    #[test]
    fn an_issued_nonce_passes_for_its_device_and_pcrs_until_it_expires() {
        let nonce = key()
            .issue(&SystemRandom::new(), "dev-a", PCRS, 1300, 0)
            .unwrap();
        assert_eq!(key().check(&nonce, "dev-a", PCRS, 1000), Ok(()));
        assert_eq!(key().check(&nonce, "dev-a", PCRS, 1299), Ok(()));
        assert_eq!(
            key().check(&nonce, "dev-a", PCRS, 1300),
            Err(NonceRefusal::Expired)
        );
    }

    #[test]
    fn nonces_sort_in_the_order_they_were_issued() {
        // Expiry first, then the issue time within the second: the history's unique index
        // on the nonce (lowercase hex, so byte order) grows at its end.
        let rng = SystemRandom::new();
        let issued = [
            (1300, 5),
            (1300, 999_999_999),
            (1301, 0),
            (1301, 7),
            (1302, 3),
        ];
        let nonces: Vec<String> = issued
            .iter()
            .map(|&(expiry, nanos)| {
                hex::encode(key().issue(&rng, "dev-a", PCRS, expiry, nanos).unwrap())
            })
            .collect();
        let mut sorted = nonces.clone();
        sorted.sort();
        assert_eq!(nonces, sorted);
        // Two nonces of the same nanosecond still differ, and both pass.
        let a = key().issue(&rng, "dev-a", PCRS, 1300, 5).unwrap();
        let b = key().issue(&rng, "dev-a", PCRS, 1300, 5).unwrap();
        assert_ne!(a, b);
        assert_eq!(key().check(&a, "dev-a", PCRS, 1000), Ok(()));
        assert_eq!(key().check(&b, "dev-a", PCRS, 1000), Ok(()));
    }

    #[test]
    fn another_device_other_pcrs_or_another_key_is_refused() {
        let nonce = key()
            .issue(&SystemRandom::new(), "dev-a", PCRS, 1300, 0)
            .unwrap();
        let refused = Err(NonceRefusal::Tag);
        assert_eq!(key().check(&nonce, "dev-b", PCRS, 1000), refused);
        assert_eq!(key().check(&nonce, "dev-a", &[0, 1, 2], 1000), refused);
        assert_eq!(key().check(&nonce, "dev-a", &[0, 1, 2, 8], 1000), refused);
        assert_eq!(
            NonceKey::derive(&[8u8; 32])
                .unwrap()
                .check(&nonce, "dev-a", PCRS, 1000),
            refused
        );
        // Length-prefixed fields: moving a byte between device id and PCRs changes the tag.
        let nonce = key()
            .issue(&SystemRandom::new(), "dev", &[1, 2], 1300, 0)
            .unwrap();
        assert_eq!(key().check(&nonce, "dev\u{1}", &[2], 1000), refused);
    }

    #[test]
    fn every_changed_bit_is_refused() {
        let nonce = key()
            .issue(&SystemRandom::new(), "dev-a", PCRS, 1300, 0)
            .unwrap();
        for byte in 0..NONCE_LEN {
            for bit in 0..8 {
                let mut changed = nonce;
                changed[byte] ^= 1 << bit;
                // A later expiry, another order or another tag: all fail the tag.
                assert_eq!(
                    key().check(&changed, "dev-a", PCRS, 1000),
                    Err(NonceRefusal::Tag),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        for len in [0, 1, 31, 33, 64] {
            assert_eq!(
                key().check(&vec![0u8; len], "dev-a", PCRS, 0),
                Err(NonceRefusal::Length)
            );
        }
    }

    #[test]
    fn the_key_is_derived_not_the_secret_itself() {
        // A tag under the raw secret must not verify: the derivation separates the uses.
        let raw = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let nonce = key()
            .issue(&SystemRandom::new(), "dev-a", PCRS, 1300, 0)
            .unwrap();
        let mut ctx = hmac::Context::with_key(&raw);
        ctx.update(LABEL);
        ctx.update(&5u64.to_be_bytes());
        ctx.update(b"dev-a");
        ctx.update(&(PCRS.len() as u64).to_be_bytes());
        ctx.update(PCRS);
        ctx.update(&nonce[..16]);
        assert_ne!(&ctx.sign().as_ref()[..TAG_LEN], &nonce[16..]);
        // And the tag is what the format says, under the derived key.
        let derived = key();
        let expected = derived.tag(
            "dev-a",
            PCRS,
            &nonce[..8].try_into().unwrap(),
            &nonce[8..16].try_into().unwrap(),
        );
        assert_eq!(&expected, &nonce[16..]);
    }
}
