//! Seal, then parse, verify, check audience and freshness, and decrypt.

use crate::support::*;
use ring::rand::SystemRandom;
use vouch_envelope::{seal, Envelope, RecipientOpen, SealRequest, SharedSecretCache};

fn round_trip(len: usize, include_chain: bool) {
    let f = fleet();
    let payload = pattern(len);
    let bytes = seal_from(
        &f.a,
        &f.b,
        &Message {
            payload: &payload,
            include_chain,
            ..Message::default()
        },
    );
    assert_eq!(receive(&bytes, &f.b, &f.a, NOW).unwrap(), payload);

    let parsed = Envelope::parse(&bytes, MAX_LEN).unwrap();
    let header = parsed.header();
    assert_eq!(header.claims().iss(), f.a.spiffe_id);
    assert_eq!(header.claims().aud(), f.b.spiffe_id);
    assert_eq!((header.claims().iat(), header.claims().exp()), (IAT, EXP));
    assert_eq!(header.data_type(), "telemetry.temperature");
    assert_eq!(header.session_id(), &SESSION);
    assert_eq!(header.seq(), 7);
    assert_eq!(
        header.sender_certificate_sha256().to_vec(),
        sha256(&f.a.device_cert)
    );
    assert_eq!(
        parsed.sender_key_agreement_key_id().to_vec(),
        sha256(&f.a.ka_cert)
    );
    if include_chain {
        assert_eq!(
            parsed.certificates(),
            std::slice::from_ref(&f.a.device_cert)
        );
        assert_eq!(
            parsed.sender_key_agreement_certificate(),
            Some(f.a.ka_cert.as_slice())
        );
    } else {
        assert!(parsed.certificates().is_empty());
        assert_eq!(parsed.sender_key_agreement_certificate(), None);
    }
}

#[test]
fn round_trip_1_kib_without_chain() {
    round_trip(1024, false);
}

#[test]
fn round_trip_1_kib_with_chain() {
    round_trip(1024, true);
}

#[test]
fn round_trip_64_kib_without_chain() {
    round_trip(64 * 1024, false);
}

#[test]
fn round_trip_64_kib_with_chain() {
    round_trip(64 * 1024, true);
}

#[test]
fn round_trip_empty_payload() {
    round_trip(0, false);
}

/// The device certificate's issuers follow it in x5chain (an array when more than one).
#[test]
fn chain_carries_issuers_after_the_device_certificate() {
    let f = fleet();
    let sender = f.a.sender_keys().with_issuers(vec![f.ca.der()]);
    let bytes = seal(
        &SealRequest {
            sender: &sender,
            recipient: &f.b.recipient_keys(),
            data_type: "telemetry.temperature",
            session_id: &SESSION,
            seq: 1,
            iat: IAT,
            exp: EXP,
            payload: b"x",
            include_chain: true,
        },
        &SystemRandom::new(),
        &SharedSecretCache::new(1),
    )
    .unwrap();
    let parsed = Envelope::parse(&bytes, MAX_LEN).unwrap();
    assert_eq!(parsed.certificates(), [f.a.device_cert.clone(), f.ca.der()]);
    assert_eq!(receive(&bytes, &f.b, &f.a, NOW).unwrap(), b"x");
}

/// One shared secret per key pair serves every message in both directions' caches, and the
/// cached path decrypts like the uncached one.
#[test]
fn shared_secret_cache_serves_repeated_messages() {
    let f = fleet();
    let (sender, recipient) = (f.a.sender_keys(), f.b.recipient_keys());
    let (send_cache, receive_cache) = (SharedSecretCache::new(4), SharedSecretCache::new(4));
    for seq in 0..5u64 {
        let payload = seq.to_be_bytes();
        let bytes = seal(
            &SealRequest {
                sender: &sender,
                recipient: &recipient,
                data_type: "telemetry.temperature",
                session_id: &SESSION,
                seq,
                iat: IAT,
                exp: EXP,
                payload: &payload,
                include_chain: false,
            },
            &SystemRandom::new(),
            &send_cache,
        )
        .unwrap();
        let signed = Envelope::parse(&bytes, MAX_LEN)
            .unwrap()
            .verify_signature(&f.a.device_public_key())
            .unwrap();
        assert_eq!(signed.header().seq(), seq);
        let open = RecipientOpen {
            my_spiffe_id: &f.b.spiffe_id,
            my_key: &f.b.ka(),
            sender_key_agreement_certificate: &f.a.ka_cert,
            sender_key_agreement_public_key: &f.a.ka_public_key(),
        };
        assert_eq!(signed.decrypt(&open, &receive_cache).unwrap(), payload);
        assert_eq!(
            signed.decrypt(&open, &SharedSecretCache::new(0)).unwrap(),
            payload
        );
    }
    assert_eq!((send_cache.len(), receive_cache.len()), (1, 1));
}

/// Two envelopes with the same inputs differ in claim id, salt, IV and ciphertext.
#[test]
fn every_envelope_draws_fresh_randomness() {
    let f = fleet();
    let one = Envelope::parse(&seal_from(&f.a, &f.b, &Message::default()), MAX_LEN).unwrap();
    let two = Envelope::parse(&seal_from(&f.a, &f.b, &Message::default()), MAX_LEN).unwrap();
    assert_ne!(one.header().claims().cti(), two.header().claims().cti());
    assert_ne!(
        one.inner().recipient().salt(),
        two.inner().recipient().salt()
    );
    assert_ne!(one.inner().iv(), two.inner().iv());
    assert_ne!(one.inner().ciphertext(), two.inner().ciphertext());
}

/// The envelope's own reader of the COSE_Sign1 and COSE_Encrypt skeletons (which borrows
/// their byte strings instead of copying them) accepts nothing coset's decoder refuses: every
/// byte of two envelopes changed three ways, every truncation, a byte appended.
#[test]
fn the_borrowing_reader_accepts_nothing_coset_refuses() {
    use coset::{CoseEncrypt, CoseSign1, TaggedCborSerializable};
    let f = fleet();
    let payload = pattern(300);
    let coset_accepts = |bytes: &[u8]| {
        CoseSign1::from_tagged_slice(bytes)
            .ok()
            .and_then(|s| s.payload)
            .is_some_and(|inner| CoseEncrypt::from_tagged_slice(&inner).is_ok())
    };
    let (mut parsed, mut refused) = (0, 0);
    for include_chain in [false, true] {
        let bytes = seal_from(
            &f.a,
            &f.b,
            &Message {
                payload: &payload,
                include_chain,
                ..Message::default()
            },
        );
        assert!(Envelope::parse(&bytes, MAX_LEN).is_ok() && coset_accepts(&bytes));
        let mut variants = vec![[bytes.as_slice(), &[0x00]].concat()];
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x20, 0xff] {
                let mut changed = bytes.clone();
                changed[i] ^= mask;
                variants.push(changed);
            }
            variants.push(bytes[..i].to_vec());
        }
        for changed in &variants {
            match Envelope::parse(changed, MAX_LEN) {
                Ok(_) => {
                    parsed += 1;
                    assert!(coset_accepts(changed), "accepted what coset refuses");
                }
                Err(_) => refused += 1,
            }
        }
    }
    // Changes inside the ciphertext, salt or signature still parse; framing changes do not.
    assert!(
        parsed > 0 && refused > 0,
        "{parsed} parsed, {refused} refused"
    );
}
