//! Verifying a signed policy bundle never panics and never accepts a bundle for a root that
//! signed nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vouch_ca::authz::signed::verify;
use vouch_ca::ids::TrustDomain;
use vouch_ca::pki::authority::generate;

fn root() -> &'static Vec<u8> {
    static ROOT: OnceLock<Vec<u8>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let files = generate("fleet.example", time::OffsetDateTime::now_utc()).ok();
        files
            .and_then(|f| pem::parse(f.root_cert_pem).ok())
            .map(|p| p.contents().to_vec())
            .unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    let (Ok(text), Ok(td)) = (std::str::from_utf8(data), TrustDomain::parse("fleet.example"))
    else {
        return;
    };
    assert!(verify(text, root(), &td, 1_800_000_000).is_err(), "a fuzzed bundle was accepted");
});
