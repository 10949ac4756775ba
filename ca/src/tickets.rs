//! TLS session tickets that every replica can open, so that a returning device resumes its
//! session (no full handshake, no client-chain verification) whichever replica it reaches.
//!
//! rustls's own ticketer keys each process at random; replicas behind one address would
//! then refuse each other's tickets, and a restart would forget them all. These tickets are
//! keyed from the bootstrap-token key instead, as attestation nonces are (`crate::nonce`):
//! replicas that share a data directory's keys open each other's tickets, and nothing new
//! has to be provisioned. The key rotates each [`PERIOD_SECS`]:
//!
//! ```text
//! period  = floor(now / PERIOD_SECS)
//! key     = HKDF-SHA256(bootstrap-token key, info = "vouch session ticket key v1" || period)
//! ticket  = period (8, big-endian) || nonce (12, random) || AES-256-GCM(key, nonce,
//!             aad = "vouch session ticket v1" || period, the session state rustls encodes)
//! ```
//!
//! A ticket opens in its own period and the next (a ticket lives [`TICKET_LIFETIME_SECS`],
//! less than a period, so the next period covers every ticket still valid), never later.
//! The session state holds the client's certificate chain as it was verified; a resumed
//! connection is identified from it, and every request still checks that certificate's
//! standing (revocation, expiry) as on a full handshake.

use crate::clock::Clock;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::Arc;

/// How long one ticket key is used for new tickets, seconds.
pub const PERIOD_SECS: i64 = 6 * 3600;

/// How long a client may resume with a ticket, seconds (told to the client; a ticket of an
/// older period than the last is refused whatever the client does).
pub const TICKET_LIFETIME_SECS: u32 = 3600;

/// HKDF info of a period's key, distinct from every other use of the same secret.
const KEY_INFO: &[u8] = b"vouch session ticket key v1";

/// Additional data of every ticket (and version of the format).
const AAD_LABEL: &[u8] = b"vouch session ticket v1";

/// Bytes before the ciphertext: the period and the nonce.
const HEADER_LEN: usize = 8 + NONCE_LEN;

/// Tickets larger than this are not opened (rustls's own tickets hold a certificate chain
/// of a few kilobytes at most).
const MAX_TICKET_LEN: usize = 16 * 1024;

/// The secret every period's key is derived from.
#[derive(Clone)]
pub struct TicketSecret(hkdf::Prk);

impl TicketSecret {
    /// Extracted from a server secret (the bootstrap-token key).
    pub fn derive(secret: &[u8]) -> Self {
        Self(hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret))
    }
}

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSecret(..)")
    }
}

/// Issues and opens session tickets with keys derived from a [`TicketSecret`].
pub struct TicketKeys {
    secret: TicketSecret,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKeys(..)")
    }
}

/// The output length of the HKDF expansion: one AES-256 key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl TicketKeys {
    /// Ticket keys from `secret`, rotating by `clock`.
    pub fn new(secret: TicketSecret, clock: Arc<dyn Clock>) -> Self {
        Self {
            secret,
            clock,
            rng: SystemRandom::new(),
        }
    }

    fn period_now(&self) -> i64 {
        self.clock.unix().div_euclid(PERIOD_SECS)
    }

    fn key(&self, period: i64) -> Option<LessSafeKey> {
        let period = period.to_be_bytes();
        let info = [KEY_INFO, &period];
        let okm = self.secret.0.expand(&info, KeyLen).ok()?;
        let mut bytes = [0u8; 32];
        okm.fill(&mut bytes).ok()?;
        UnboundKey::new(&AES_256_GCM, &bytes)
            .ok()
            .map(LessSafeKey::new)
    }

    fn aad(period: i64) -> Vec<u8> {
        [AAD_LABEL, &period.to_be_bytes()].concat()
    }

    /// Seals `plain` under the current period's key.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let period = self.period_now();
        let key = self.key(period)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(Self::aad(period)),
            &mut sealed,
        )
        .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Opens a ticket of this period or the one before; `None` for anything else (another
    /// key, an older period, a changed byte, a malformed ticket).
    pub fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET_LEN {
            return None;
        }
        let (period, rest) = ticket.split_first_chunk::<8>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let period = i64::from_be_bytes(*period);
        let now = self.period_now();
        if period != now && period != now - 1 {
            return None;
        }
        let key = self.key(period)?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(Self::aad(period)),
                &mut buffer,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn keys(secret: &[u8], clock: &ManualClock) -> TicketKeys {
        TicketKeys::new(TicketSecret::derive(secret), Arc::new(clock.clone()))
    }

    #[test]
    fn a_ticket_opens_with_the_same_secret_in_another_process() {
        let clock = ManualClock::starting_now();
        let ticket = keys(b"shared secret", &clock).seal(b"session").unwrap();
        // Another replica (another `TicketKeys` from the same secret) opens it.
        let other = keys(b"shared secret", &clock);
        assert_eq!(other.open(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(keys(b"another secret", &clock).open(&ticket), None);
    }

    #[test]
    fn a_ticket_opens_in_its_period_and_the_next_only() {
        let clock = ManualClock::starting_now();
        let keys = keys(b"secret", &clock);
        let ticket = keys.seal(b"session").unwrap();
        clock.advance(PERIOD_SECS);
        assert!(keys.open(&ticket).is_some(), "the next period");
        clock.advance(PERIOD_SECS);
        assert_eq!(keys.open(&ticket), None, "two periods on");
    }

    #[test]
    fn a_changed_or_malformed_ticket_does_not_open() {
        let clock = ManualClock::starting_now();
        let keys = keys(b"secret", &clock);
        let ticket = keys.seal(b"session").unwrap();
        for i in 0..ticket.len() {
            let mut changed = ticket.clone();
            changed[i] ^= 1;
            assert_eq!(keys.open(&changed), None, "byte {i} changed");
        }
        for len in 0..ticket.len() {
            assert_eq!(keys.open(&ticket[..len]), None, "cut to {len} bytes");
        }
        assert_eq!(keys.open(&vec![0u8; MAX_TICKET_LEN + 1]), None);
        // Two tickets of the same session differ (a fresh nonce each).
        assert_ne!(keys.seal(b"session"), keys.seal(b"session"));
    }
}
