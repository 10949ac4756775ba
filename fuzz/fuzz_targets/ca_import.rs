//! Loading CA material (certificates and keys given to `vouch ca import`) never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vouch_ca::pki::authority::{Authority, CaFiles};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, "\n\n");
    let files = CaFiles {
        root_cert_pem: parts.next().unwrap_or("").to_owned(),
        root_key_pem: None,
        issuing_cert_pem: parts.next().unwrap_or("").to_owned(),
        issuing_key_pem: parts.next().unwrap_or("").to_owned(),
    };
    let _ = Authority::load(&files);
});
