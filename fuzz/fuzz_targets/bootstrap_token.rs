//! Bootstrap token verification never panics and never accepts a token it did not sign.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vouch_ca::tokens::{BootstrapClaims, TokenKey, BOOTSTRAP_AUDIENCE};

fuzz_target!(|data: &[u8]| {
    let Some(key) = TokenKey::from_file_text(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=") else {
        return;
    };
    if let Ok(token) = std::str::from_utf8(data) {
        let r: Result<BootstrapClaims, _> = key.verify(token, BOOTSTRAP_AUDIENCE, 0, 60);
        assert!(r.is_err(), "a fuzzed token was accepted");
    }
});
