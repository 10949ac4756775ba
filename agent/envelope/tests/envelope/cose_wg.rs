//! The COSE working group's ECDH-SS + HKDF-256 P-256 examples (testdata/cose-wg/), run through
//! the same key derivation and decryption code as the envelope.

use base64::Engine;
use coset::TaggedCborSerializable;
use ring::hmac;
use serde_json::Value;
use vouch_envelope::direct::{ContentAlgorithm, DirectEncrypt};
use vouch_envelope::kdf::{derive_key, KdfContext, PartyInfo};
use vouch_envelope::{EnvelopeError, KeyAgreementKey, SharedSecretCache};

fn example(name: &str) -> Value {
    let path = format!("{}/testdata/cose-wg/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn b64url(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.as_str().unwrap())
        .unwrap()
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn keys(ex: &Value, envelope: &str) -> (KeyAgreementKey, Vec<u8>) {
    let recipient = &ex["input"][envelope]["recipients"][0];
    let mine = KeyAgreementKey::from_scalar(&b64url(&recipient["key"]["d"])).unwrap();
    let sender = &recipient["sender_key"];
    let mut sender_public = vec![0x04];
    sender_public.extend(b64url(&sender["x"]));
    sender_public.extend(b64url(&sender["y"]));
    (mine, sender_public)
}

fn decrypt_example(name: &str, algorithm: ContentAlgorithm) {
    let ex = example(name);
    let (mine, sender_public) = keys(&ex, "enveloped");
    let intermediates = &ex["intermediates"];
    let message = DirectEncrypt::parse(&hex_of(&ex["output"]["cbor"])).unwrap();
    assert_eq!(message.algorithm(), algorithm);
    assert_eq!(
        message.recipient().static_key().map(|k| k.to_vec()),
        Some(sender_public.clone())
    );
    assert_eq!(
        message.recipient().key_id(),
        Some(&b"meriadoc.brandybuck@buckland.example"[..])
    );
    let context = message.kdf_context();
    assert_eq!(
        context.encode().unwrap(),
        hex_of(&intermediates["recipients"][0]["Context_hex"])
    );
    let cache = SharedSecretCache::new(2);
    let secret = cache.shared_secret(&mine, &sender_public).unwrap();
    assert_eq!(
        secret.to_vec(),
        hex_of(&intermediates["recipients"][0]["Secret_hex"])
    );
    assert_eq!(
        *derive_key(&*secret, message.recipient().salt(), &context).unwrap(),
        hex_of(&intermediates["CEK_hex"])
    );
    let plaintext = message.open(&mine, &sender_public, b"", &cache).unwrap();
    assert_eq!(
        plaintext,
        ex["input"]["plaintext"].as_str().unwrap().as_bytes()
    );
    // The same path refuses other external AAD, as the envelope relies on.
    assert_eq!(
        message.open(&mine, &sender_public, b"another header", &cache),
        Err(EnvelopeError::DecryptionFailed)
    );
}

#[test]
fn cose_wg_p256_ss_hkdf_256_01_a128gcm_decrypts() {
    decrypt_example("p256-ss-hkdf-256-01.json", ContentAlgorithm::A128Gcm);
}

#[test]
fn cose_wg_p256_ss_hkdf_256_02_a256gcm_decrypts() {
    decrypt_example("p256-ss-hkdf-256-02.json", ContentAlgorithm::A256Gcm);
}

/// Example -03 is a COSE_Mac (HMAC 512/512), which this crate does not implement: its ECDH,
/// KDF context and 512-bit derived key go through the envelope's code, and ring checks the tag.
#[test]
fn cose_wg_p256_ss_hkdf_256_03_key_derivation_for_hmac_512() {
    let ex = example("p256-ss-hkdf-256-03.json");
    let (mine, sender_public) = keys(&ex, "mac");
    let intermediates = &ex["intermediates"];
    let nonce = hex_of(&ex["input"]["rng_stream"][0]);
    let context = KdfContext {
        algorithm_id: coset::iana::Algorithm::HMAC_512_512 as i64,
        key_bits: 512,
        party_u: PartyInfo {
            nonce: Some(&nonce),
            ..PartyInfo::default()
        },
        party_v: PartyInfo::default(),
        recipient_protected: &[0xa1, 0x01, 0x38, 0x1a],
    };
    assert_eq!(
        context.encode().unwrap(),
        hex_of(&intermediates["recipients"][0]["Context_hex"])
    );
    let secret = SharedSecretCache::new(0)
        .shared_secret(&mine, &sender_public)
        .unwrap();
    let key = derive_key(&*secret, None, &context).unwrap();
    assert_eq!(*key, hex_of(&intermediates["CEK_hex"]));
    let mac = coset::CoseMac::from_tagged_slice(&hex_of(&ex["output"]["cbor"])).unwrap();
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA512, &key),
        &hex_of(&intermediates["ToMac_hex"]),
    );
    assert_eq!(tag.as_ref(), mac.tag.as_slice());
}
