//! CSR parsing and checks (DER and PEM) never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vouch_ca::pki::csr::check_csr_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vouch_ca::pki::csr::check_csr_pem(text);
    }
});
