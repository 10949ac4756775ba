//! The TLS algorithms every Vouch endpoint offers and prefers: the CA's server, and each
//! sidecar's delivery server and client.

use rustls::crypto::CryptoProvider;
use rustls::CipherSuite;

/// ring's algorithms with TLS 1.3's AES-128-GCM-SHA256 first. Servers built on it set
/// `ignore_client_order`, so this order decides: clients (rustls, OpenSSL) list
/// AES-256-GCM-SHA384 first, and its SHA-384 has no hardware instructions on x86, while
/// SHA-256 does, and every handshake's key schedule and transcript hash run the suite's hash
/// (profiled: SHA-384 was among the server's costliest functions in enrollment on new connections).
/// AES-128-GCM is TLS 1.3's mandatory suite; the others stay offered after it.
pub fn crypto_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: the rest keep ring's order.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_sha256_comes_first_and_nothing_is_dropped() {
        let ours = crypto_provider().cipher_suites;
        let ring = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(
            ours.first().map(|s| s.suite()),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(ours.len(), ring.len());
        for suite in &ring {
            assert!(ours.iter().any(|s| s.suite() == suite.suite()));
        }
    }
}
