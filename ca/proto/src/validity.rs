//! Remembering what verified, and for how long: the time window in which a certificate chain
//! that checked out stays checked out, and a bounded map for such results. Shared by the
//! server's cache of verified client chains and the sidecar's cache of verified peers.

use std::collections::HashMap;
use x509_parser::prelude::X509Certificate;

/// The Unix seconds (both ends included, as webpki checks them) in which a chain that verified
/// stays verified: the intersection of its certificates' validity. Nothing else a chain check
/// reads depends on the time (webpki checks no validity of the trust anchor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second of validity.
    pub not_before: i64,
    /// Last second of validity.
    pub not_after: i64,
}

impl Validity {
    /// The validity of `cert`.
    pub fn of(cert: &X509Certificate<'_>) -> Self {
        Self {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        }
    }

    /// The part of `self` that is also within `outer`.
    pub fn within(self, outer: Validity) -> Self {
        Self {
            not_before: self.not_before.max(outer.not_before),
            not_after: self.not_after.min(outer.not_after),
        }
    }

    /// Whether a verification at `now` would see the same validity checks pass. A negative
    /// `now` is never served from a cache (a chain check reads it as 0).
    pub fn contains(self, now: i64) -> bool {
        now >= 0 && self.not_before <= now && now <= self.not_after
    }
}

/// Inserts `value` under `key`, first emptying `map` if it holds `capacity` entries and `key`
/// is new: memory stays bounded, and a flood of new keys costs only re-verification.
pub fn insert_bounded<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    key: K,
    value: V,
) {
    if capacity == 0 {
        return;
    }
    if map.len() >= capacity && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_both_ends_and_nothing_before_the_epoch() {
        let w = Validity {
            not_before: 10,
            not_after: 20,
        };
        assert!(w.contains(10) && w.contains(20));
        assert!(!w.contains(9) && !w.contains(21));
        let open = Validity {
            not_before: i64::MIN,
            not_after: i64::MAX,
        };
        assert!(!open.contains(-1));
        let inner = w.within(Validity {
            not_before: 15,
            not_after: 30,
        });
        assert_eq!((inner.not_before, inner.not_after), (15, 20));
    }

    #[test]
    fn a_full_map_starts_again_empty_but_keeps_a_known_key() {
        let mut map = HashMap::new();
        for k in 0..3 {
            insert_bounded(&mut map, 3, k, k);
        }
        insert_bounded(&mut map, 3, 1, 10);
        assert_eq!(map.len(), 3);
        insert_bounded(&mut map, 3, 7, 7);
        assert_eq!(map.len(), 1);
        assert_eq!(map.get(&7), Some(&7));
        insert_bounded(&mut map, 0, 8, 8);
        assert!(!map.contains_key(&8));
    }
}
