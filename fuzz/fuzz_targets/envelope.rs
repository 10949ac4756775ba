//! Parsing an envelope never panics; a parsed envelope never verifies with a key that did not
//! sign it, and decrypting a fuzzed inner COSE_Encrypt with fixed keys never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vouch_envelope::direct::DirectEncrypt;
use vouch_envelope::{Envelope, KeyAgreementKey, SharedSecretCache};

struct Keys {
    device_public: Vec<u8>,
    mine: KeyAgreementKey,
    sender_public: Vec<u8>,
    cache: SharedSecretCache,
}

fn keys() -> Option<&'static Keys> {
    static KEYS: OnceLock<Option<Keys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = |byte: u8| KeyAgreementKey::from_scalar(&[byte; 32]).ok();
        Some(Keys {
            device_public: key(3)?.public_key().to_vec(),
            mine: key(1)?,
            sender_public: key(2)?.public_key().to_vec(),
            cache: SharedSecretCache::new(4),
        })
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(k) = keys() else { return };
    if let Ok(parsed) = Envelope::parse(data, 64 * 1024) {
        let aad = parsed.protected_header_bytes().to_vec();
        let _ = parsed.inner().open(&k.mine, &k.sender_public, &aad, &k.cache);
        assert!(
            parsed.verify_signature(&k.device_public).is_err(),
            "a fuzzed envelope verified with a key that signed nothing"
        );
    }
    if let Ok(inner) = DirectEncrypt::parse(data) {
        let _ = inner.open(&k.mine, &k.sender_public, b"", &k.cache);
    }
});
