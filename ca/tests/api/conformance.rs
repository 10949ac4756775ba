//! Public hostile-input corpora, copied into the repository under `tests/vectors/` (see its
//! README for sources and licences):
//! Wycheproof signature vectors through the CSR signature check, and x509-limbo certificates
//! as hostile input to the CSR parser and to CA import. These tests fail, rather than skip,
//! when the corpora are missing.

use serde_json::Value;
use std::path::PathBuf;
use vouch_ca::pki::authority::{Authority, CaFiles};
use vouch_ca::pki::csr::{check_csr_der, check_csr_pem, verify_signature, KeyKind};

fn testdata(rel: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("corpus {} is needed: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn run_wycheproof(file: &str, kind: KeyKind, key_of: impl Fn(&Value) -> Vec<u8>) {
    let suite = testdata(file);
    let mut checked = 0;
    for group in suite["testGroups"].as_array().unwrap() {
        let key = key_of(&group["publicKey"]);
        for t in group["tests"].as_array().unwrap() {
            let ok = verify_signature(kind, &key, &unhex(&t["msg"]), &unhex(&t["sig"])).is_ok();
            match t["result"].as_str().unwrap() {
                "valid" => assert!(ok, "{file} tcId {} must verify", t["tcId"]),
                "invalid" => assert!(!ok, "{file} tcId {} must be refused", t["tcId"]),
                _ => {} // "acceptable": either answer is allowed
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{file}: only {checked} vectors");
}

#[test]
fn wycheproof_ecdsa_p256_sha256_der() {
    run_wycheproof(
        "wycheproof/ecdsa_secp256r1_sha256_test.json",
        KeyKind::EcdsaP256,
        |k| unhex(&k["uncompressed"]),
    );
}

#[test]
fn wycheproof_ed25519() {
    run_wycheproof("wycheproof/ed25519_test.json", KeyKind::Ed25519, |k| {
        unhex(&k["pk"])
    });
}

#[test]
fn x509_limbo_certificates_are_not_csrs_and_not_a_ca_pair_by_accident() {
    let limbo = testdata("x509-limbo/limbo.json");
    let cases = limbo["testcases"].as_array().unwrap();
    assert!(cases.len() > 100);
    for case in cases {
        let peer = case["peer_certificate"].as_str().unwrap();
        // A certificate is not a CSR, whatever it holds.
        assert!(check_csr_pem(peer).is_err());
        if let Ok(der) = pem::parse(peer) {
            assert!(check_csr_der(der.contents()).is_err());
        }
        // CA import with hostile material: refused unless the pair really fits, never a panic.
        for root in case["trusted_certs"].as_array().unwrap() {
            let files = CaFiles {
                root_cert_pem: root.as_str().unwrap().to_owned(),
                root_key_pem: None,
                issuing_cert_pem: peer.to_owned(),
                issuing_key_pem: case["peer_certificate_key"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            };
            let _ = Authority::load(&files);
        }
    }
}
