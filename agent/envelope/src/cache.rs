//! A bounded cache of static-static ECDH shared secrets, so that a steady flow between two
//! devices costs one signature and one verification per envelope, not also a scalar
//! multiplication.

use crate::keys::{parse_public_key, KeyAgreementKey, SEC1_UNCOMPRESSED_LEN};
use crate::EnvelopeError;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use zeroize::Zeroizing;

type PublicKeyBytes = [u8; SEC1_UNCOMPRESSED_LEN];

struct Entry {
    // Boxed so that the table's own memory never holds the secret: a move or rehash copies the
    // pointer only, and dropping the box wipes the one copy.
    secret: Box<Zeroizing<[u8; 32]>>,
    last_used: u64,
}

struct Entries {
    map: HashMap<(PublicKeyBytes, PublicKeyBytes), Entry>,
    clock: u64,
}

/// Shared secrets keyed by (my key-agreement public key, peer key-agreement public key), at
/// most `capacity` of them; the least recently used one is evicted first. Secrets are wiped
/// when evicted, cleared or dropped. Safe to share between threads (one short lock per use;
/// the ECDH itself runs outside the lock).
pub struct SharedSecretCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

impl SharedSecretCache {
    /// A cache holding at most `capacity` shared secrets; `0` disables caching.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                clock: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Nothing in this module panics while holding the lock; if something did, the map is
        // still a valid map of valid secrets.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The ECDH shared secret (x coordinate, 32 bytes) between `mine` and the uncompressed SEC1
    /// point `peer_public_key`, from the cache or computed and remembered.
    pub fn shared_secret(
        &self,
        mine: &KeyAgreementKey,
        peer_public_key: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
        let peer = <PublicKeyBytes>::try_from(peer_public_key).map_err(|_| {
            EnvelopeError::InvalidKey("key-agreement public key is not an uncompressed P-256 point")
        })?;
        let key = (*mine.public_key(), peer);
        if self.capacity > 0 {
            let mut entries = self.lock();
            entries.clock = entries.clock.wrapping_add(1);
            let now = entries.clock;
            if let Some(entry) = entries.map.get_mut(&key) {
                entry.last_used = now;
                return Ok(Zeroizing::new(**entry.secret));
            }
        }
        // A miss: the point is validated before it can become a cache key.
        let secret = mine.agree(&parse_public_key(peer_public_key)?);
        if self.capacity > 0 {
            let mut entries = self.lock();
            if entries.map.len() >= self.capacity && !entries.map.contains_key(&key) {
                let oldest = entries
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    // Dropping the entry wipes its secret.
                    entries.map.remove(&oldest);
                }
            }
            let last_used = entries.clock;
            entries.map.insert(
                key,
                Entry {
                    secret: Box::new(Zeroizing::new(*secret)),
                    last_used,
                },
            );
        }
        Ok(secret)
    }

    /// How many shared secrets are cached.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no shared secret is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets (and wipes) every cached secret, e.g. when a key-agreement key is rotated.
    pub fn clear(&self) {
        self.lock().map.clear();
    }
}

impl std::fmt::Debug for SharedSecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSecretCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> KeyAgreementKey {
        KeyAgreementKey::from_scalar(&[byte; 32]).unwrap()
    }

    #[test]
    fn evicts_the_least_recently_used_and_agrees_with_uncached() {
        let cache = SharedSecretCache::new(2);
        let uncached = SharedSecretCache::new(0);
        let me = key(1);
        let (a, b, c) = (key(2), key(3), key(4));
        let sa = cache.shared_secret(&me, a.public_key()).unwrap();
        assert_eq!(*sa, *uncached.shared_secret(&me, a.public_key()).unwrap());
        // The peer computes the same secret from its side.
        assert_eq!(*sa, *uncached.shared_secret(&a, me.public_key()).unwrap());
        cache.shared_secret(&me, b.public_key()).unwrap();
        cache.shared_secret(&me, a.public_key()).unwrap(); // a is now newer than b
        cache.shared_secret(&me, c.public_key()).unwrap(); // evicts b
        assert_eq!(cache.len(), 2);
        let entries = cache.lock();
        assert!(entries
            .map
            .contains_key(&(*me.public_key(), *a.public_key())));
        assert!(!entries
            .map
            .contains_key(&(*me.public_key(), *b.public_key())));
        drop(entries);
        assert!(uncached.is_empty());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn refuses_points_off_the_curve_and_compressed_points() {
        let cache = SharedSecretCache::new(4);
        let mut bad = *key(2).public_key();
        bad[64] ^= 1;
        assert_eq!(
            cache.shared_secret(&key(1), &bad).unwrap_err().reason(),
            "invalid_key"
        );
        assert_eq!(
            cache
                .shared_secret(&key(1), &bad[..33])
                .unwrap_err()
                .reason(),
            "invalid_key"
        );
        assert!(cache.is_empty());
    }
}
