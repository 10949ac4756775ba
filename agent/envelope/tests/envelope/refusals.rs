//! Every refusal a receiver must make, one test each, with real keys. Each attack is built so
//! that it passes every step before the one that must refuse it.

use crate::support::*;
use coset::cbor::value::Value;
use coset::{
    iana, Algorithm, CoseSign1, Label, RegisteredLabelWithPrivate, TaggedCborSerializable,
};
use vouch_envelope::direct::DirectEncrypt;
use vouch_envelope::labels;
use vouch_envelope::{
    seal, Envelope, EnvelopeError, RecipientKeys, RecipientOpen, SealRequest, SharedSecretCache,
};

fn set_protected(sign1: &mut CoseSign1, label: i64, value: Value) {
    sign1.protected.original_data = None;
    let rest = &mut sign1.protected.header.rest;
    rest.retain(|(l, _)| *l != Label::Int(label));
    rest.push((Label::Int(label), value));
}

fn set_claim(sign1: &mut CoseSign1, key: i64, value: Value) {
    sign1.protected.original_data = None;
    let (_, claims) = sign1
        .protected
        .header
        .rest
        .iter_mut()
        .find(|(l, _)| *l == Label::Int(labels::CWT_CLAIMS))
        .unwrap();
    let Value::Map(entries) = claims else {
        panic!("claims are a map")
    };
    entries.retain(|(k, _)| *k != Value::Integer(key.into()));
    entries.push((Value::Integer(key.into()), value));
}

fn set_recipient_header(sign1: &mut CoseSign1, label: i64, value: Value) {
    edit_inner(sign1, |inner| {
        let rest = &mut inner.recipients[0].unprotected.rest;
        rest.retain(|(l, _)| *l != Label::Int(label));
        rest.push((Label::Int(label), value));
    });
}

fn flip_byte_of(bytes: &mut [u8], needle: &[u8]) {
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present");
    bytes[at] ^= 0x01;
}

#[test]
fn tampered_ciphertext_is_refused() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    let ciphertext = Envelope::parse(&bytes, MAX_LEN)
        .unwrap()
        .inner()
        .ciphertext()
        .to_vec();
    // Flipped in transit: the signature covers the ciphertext.
    let mut in_transit = bytes.clone();
    flip_byte_of(&mut in_transit, &ciphertext);
    assert_eq!(
        reason(receive(&in_transit, &f.b, &f.a, NOW)),
        "bad_signature"
    );
    // Flipped before signing (a signed but corrupted ciphertext): AES-GCM refuses it.
    let resigned = resign(&bytes, &f.a, |s| {
        edit_inner(s, |inner| inner.ciphertext.as_mut().unwrap()[0] ^= 0x01)
    });
    assert_eq!(
        receive(&resigned, &f.b, &f.a, NOW),
        Err(EnvelopeError::DecryptionFailed)
    );
}

#[test]
fn tampered_protected_header_fails_the_signature() {
    let f = fleet();
    let mut bytes = seal_from(&f.a, &f.b, &Message::default());
    let cti = *Envelope::parse(&bytes, MAX_LEN)
        .unwrap()
        .header()
        .claims()
        .cti();
    flip_byte_of(&mut bytes, &cti);
    // Still a well-formed envelope, with another claim id...
    let parsed = Envelope::parse(&bytes, MAX_LEN).unwrap();
    assert_ne!(parsed.header().claims().cti(), &cti);
    // ...that the sender never signed.
    assert_eq!(
        parsed
            .verify_signature(&f.a.device_public_key())
            .unwrap_err(),
        EnvelopeError::BadSignature
    );
}

/// The same sender's message A's ciphertext, moved under message B's outer header and signed
/// again: the external AAD (B's protected header) differs from A's, so decryption fails.
#[test]
fn ciphertext_moved_under_another_outer_header_fails_decryption() {
    let f = fleet();
    let a = seal_from(
        &f.a,
        &f.b,
        &Message {
            seq: 1,
            payload: b"open the valve",
            ..Message::default()
        },
    );
    let b = seal_from(
        &f.a,
        &f.b,
        &Message {
            seq: 2,
            payload: b"close the valve",
            ..Message::default()
        },
    );
    let a_inner = CoseSign1::from_tagged_slice(&a).unwrap().payload.unwrap();
    let moved = resign(&b, &f.a, |s| s.payload = Some(a_inner));
    let signed = Envelope::parse(&moved, MAX_LEN)
        .unwrap()
        .verify_signature(&f.a.device_public_key())
        .unwrap();
    assert_eq!(signed.header().seq(), 2);
    assert_eq!(
        receive(&moved, &f.b, &f.a, NOW),
        Err(EnvelopeError::DecryptionFailed)
    );
}

/// Insider C strips A's signature and signs A's envelope unchanged: it does not verify with
/// A's key.
#[test]
fn envelope_resigned_by_another_device_fails_with_the_senders_key() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    let resigned = resign(&bytes, &f.c, |_| {});
    assert_eq!(reason(receive(&resigned, &f.b, &f.a, NOW)), "bad_signature");
    // It verifies with C's key, but names A as sender and A's certificate.
    let signed = Envelope::parse(&resigned, MAX_LEN)
        .unwrap()
        .verify_signature(&f.c.device_public_key())
        .unwrap();
    assert_eq!(signed.header().claims().iss(), f.a.spiffe_id);
    assert_eq!(
        signed.header().sender_certificate_sha256().to_vec(),
        sha256(&f.a.device_cert)
    );
}

/// C claims A's envelope as its own (iss and x5t), keeping A's key agreement: the key
/// agreement's PartyU identity still names A, so it is refused.
#[test]
fn insider_claiming_the_envelope_is_refused_by_the_identity_binding() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    let resigned = resign(&bytes, &f.c, |s| {
        set_claim(s, labels::CLAIM_ISS, Value::Text(f.c.spiffe_id.clone()));
        set_protected(
            s,
            labels::X5T,
            Value::Array(vec![
                Value::Integer((-16).into()),
                Value::Bytes(sha256(&f.c.device_cert)),
            ]),
        );
    });
    assert_eq!(
        Envelope::parse(&resigned, MAX_LEN).unwrap_err(),
        EnvelopeError::IdentityMismatch("iss")
    );
}

/// C claims A's envelope completely: iss, x5t, PartyU identity and static key id all name C.
/// Everything verifies up to decryption, which fails: the content key came from A's
/// key-agreement key and A's identity, which C cannot reproduce.
#[test]
fn insider_claiming_the_envelope_and_its_key_agreement_fails_decryption() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    let resigned = resign(&bytes, &f.c, |s| {
        set_claim(s, labels::CLAIM_ISS, Value::Text(f.c.spiffe_id.clone()));
        set_protected(
            s,
            labels::X5T,
            Value::Array(vec![
                Value::Integer((-16).into()),
                Value::Bytes(sha256(&f.c.device_cert)),
            ]),
        );
        set_recipient_header(
            s,
            labels::PARTY_U_IDENTITY,
            Value::Bytes(f.c.spiffe_id.clone().into_bytes()),
        );
        set_recipient_header(s, labels::STATIC_KEY_ID, Value::Bytes(sha256(&f.c.ka_cert)));
    });
    let signed = Envelope::parse(&resigned, MAX_LEN)
        .unwrap()
        .verify_signature(&f.c.device_public_key())
        .unwrap();
    signed.check_audience(&f.b.spiffe_id).unwrap();
    signed.check_fresh(NOW, SKEW, MAX_LIFETIME).unwrap();
    let (my_key, cache) = (f.b.ka(), SharedSecretCache::new(4));
    let decrypt_with = |sender: &Device| {
        signed.decrypt(
            &RecipientOpen {
                my_spiffe_id: &f.b.spiffe_id,
                my_key: &my_key,
                sender_key_agreement_certificate: &sender.ka_cert,
                sender_key_agreement_public_key: &sender.ka_public_key(),
            },
            &cache,
        )
    };
    // The receiver resolves the static key id to C's key-agreement certificate.
    assert_eq!(decrypt_with(&f.c), Err(EnvelopeError::DecryptionFailed));
    // A's key-agreement certificate is not the one the static key id names.
    assert_eq!(reason(decrypt_with(&f.a)), "key_mismatch");
}

#[test]
fn wrong_audience_is_refused() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    assert_eq!(reason(receive(&bytes, &f.c, &f.a, NOW)), "wrong_audience");
    // decrypt checks the audience again, should a caller skip the step.
    let signed = Envelope::parse(&bytes, MAX_LEN)
        .unwrap()
        .verify_signature(&f.a.device_public_key())
        .unwrap();
    let open = RecipientOpen {
        my_spiffe_id: &f.c.spiffe_id,
        my_key: &f.c.ka(),
        sender_key_agreement_certificate: &f.a.ka_cert,
        sender_key_agreement_public_key: &f.a.ka_public_key(),
    };
    assert_eq!(
        reason(signed.decrypt(&open, &SharedSecretCache::new(1))),
        "wrong_audience"
    );
}

#[test]
fn expired_envelope_is_refused() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    assert!(receive(&bytes, &f.b, &f.a, EXP + SKEW - 1).is_ok());
    assert_eq!(
        receive(&bytes, &f.b, &f.a, EXP + SKEW),
        Err(EnvelopeError::Expired {
            exp: EXP,
            now: EXP + SKEW
        })
    );
}

#[test]
fn envelope_from_the_future_is_refused() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    assert!(receive(&bytes, &f.b, &f.a, IAT - SKEW).is_ok());
    assert_eq!(
        receive(&bytes, &f.b, &f.a, IAT - SKEW - 1),
        Err(EnvelopeError::NotYetValid {
            iat: IAT,
            now: IAT - SKEW - 1
        })
    );
}

#[test]
fn overlong_lifetime_is_refused() {
    let f = fleet();
    let exp = IAT + MAX_LIFETIME + 1;
    let bytes = seal_from(
        &f.a,
        &f.b,
        &Message {
            exp,
            ..Message::default()
        },
    );
    assert_eq!(
        reason(receive(&bytes, &f.b, &f.a, NOW)),
        "lifetime_too_long"
    );
}

#[test]
fn oversized_envelope_is_refused_before_decoding() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    assert!(Envelope::parse(&bytes, bytes.len()).is_ok());
    assert_eq!(
        Envelope::parse(&bytes, bytes.len() - 1).unwrap_err(),
        EnvelopeError::TooLarge {
            len: bytes.len(),
            max: bytes.len() - 1
        }
    );
    // Not even a COSE structure is looked at.
    assert_eq!(reason(Envelope::parse(&[0xff; 100], 99)), "too_large");
}

#[test]
fn truncated_extended_and_garbage_inputs_are_refused() {
    let f = fleet();
    let bytes = seal_from(
        &f.a,
        &f.b,
        &Message {
            include_chain: true,
            ..Message::default()
        },
    );
    for len in 0..bytes.len() {
        assert!(
            Envelope::parse(&bytes[..len], MAX_LEN).is_err(),
            "prefix of {len} bytes"
        );
    }
    let mut extended = bytes.clone();
    extended.push(0x00);
    assert_eq!(reason(Envelope::parse(&extended, MAX_LEN)), "malformed");
    // Untagged, and tagged as something else (COSE_Sign, 98).
    assert_eq!(
        reason(Envelope::parse(&untagged(&bytes), MAX_LEN)),
        "malformed"
    );
    let mut retagged = bytes.clone();
    retagged[0..2].copy_from_slice(&[0xd8, 0x62]);
    assert_eq!(reason(Envelope::parse(&retagged, MAX_LEN)), "malformed");
    // Lengths far beyond the input, and deep nesting.
    for hostile in [
        &[
            0xd2, 0x84, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ][..],
        &[0xd2, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[
            0xd2, 0x84, 0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ][..],
        &[0x81; 100_000][..],
    ] {
        assert_eq!(reason(Envelope::parse(hostile, MAX_LEN)), "malformed");
    }
    // Pseudo-random garbage, and the envelope with pseudo-random bytes changed: never a panic.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let len = (next() % 600) as usize;
        let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        assert!(Envelope::parse(&garbage, MAX_LEN).is_err());
        let mut mutated = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % mutated.len();
            mutated[at] = next() as u8;
        }
        if let Ok(parsed) = Envelope::parse(&mutated, MAX_LEN) {
            assert!(parsed.verify_signature(&f.a.device_public_key()).is_err() || mutated == bytes);
        }
        let _ = DirectEncrypt::parse(&mutated);
    }
}

/// Sealed to a key-agreement key that is not the target's: the target's own key cannot open it.
#[test]
fn envelope_sealed_to_another_key_agreement_key_fails_decryption() {
    let f = fleet();
    let not_bs_key = RecipientKeys::new(f.b.spiffe_id.clone(), &f.c.ka_public_key()).unwrap();
    let bytes = seal_to_keys(&f.a, &not_bs_key, &Message::default());
    assert_eq!(
        receive(&bytes, &f.b, &f.a, NOW),
        Err(EnvelopeError::DecryptionFailed)
    );
}

#[test]
fn unknown_critical_header_is_refused() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    let resigned = resign(&bytes, &f.a, |s| {
        s.protected
            .header
            .crit
            .push(RegisteredLabelWithPrivate::PrivateUse(-65600));
        set_protected(s, -65600, Value::Bool(true));
    });
    assert_eq!(
        Envelope::parse(&resigned, MAX_LEN).unwrap_err(),
        EnvelopeError::UnknownCriticalHeader("-65600".into())
    );
    // Unknown and not critical: refused too, this format is closed.
    let resigned = resign(&bytes, &f.a, |s| {
        set_protected(s, -65600, Value::Bool(true))
    });
    assert_eq!(reason(Envelope::parse(&resigned, MAX_LEN)), "malformed");
}

#[test]
fn other_algorithms_are_refused() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    let es384 = resign(&bytes, &f.a, |s| {
        s.protected.original_data = None;
        s.protected.header.alg = Some(Algorithm::Assigned(iana::Algorithm::ES384));
    });
    assert_eq!(
        Envelope::parse(&es384, MAX_LEN).unwrap_err(),
        EnvelopeError::UnsupportedAlgorithm("signature")
    );
    let a128 = resign(&bytes, &f.a, |s| {
        edit_inner(s, |inner| {
            inner.protected.original_data = None;
            inner.protected.header.alg = Some(Algorithm::Assigned(iana::Algorithm::A128GCM));
        })
    });
    assert_eq!(
        Envelope::parse(&a128, MAX_LEN).unwrap_err(),
        EnvelopeError::UnsupportedAlgorithm("content")
    );
    let es = resign(&bytes, &f.a, |s| {
        edit_inner(s, |inner| {
            inner.recipients[0].protected.original_data = None;
            inner.recipients[0].protected.header.alg =
                Some(Algorithm::Assigned(iana::Algorithm::ECDH_ES_HKDF_256));
        })
    });
    assert_eq!(
        Envelope::parse(&es, MAX_LEN).unwrap_err(),
        EnvelopeError::UnsupportedAlgorithm("recipient")
    );
}

#[test]
fn missing_or_mistyped_claims_are_refused() {
    let f = fleet();
    let bytes = seal_from(&f.a, &f.b, &Message::default());
    let without_cti = resign(&bytes, &f.a, |s| {
        set_claim(s, labels::CLAIM_CTI, Value::Null);
        let (_, Value::Map(claims)) = s
            .protected
            .header
            .rest
            .iter_mut()
            .find(|(l, _)| *l == Label::Int(labels::CWT_CLAIMS))
            .unwrap()
        else {
            panic!()
        };
        claims.retain(|(k, _)| *k != Value::Integer(labels::CLAIM_CTI.into()));
    });
    assert_eq!(
        Envelope::parse(&without_cti, MAX_LEN).unwrap_err(),
        EnvelopeError::Malformed("cti missing")
    );
    let text_exp = resign(&bytes, &f.a, |s| {
        set_claim(s, labels::CLAIM_EXP, Value::Text("tomorrow".into()))
    });
    assert_eq!(
        Envelope::parse(&text_exp, MAX_LEN).unwrap_err(),
        EnvelopeError::Malformed("exp is not a uint")
    );
    let short_session = resign(&bytes, &f.a, |s| {
        set_protected(s, labels::SESSION_ID, Value::Bytes(vec![1; 8]))
    });
    assert_eq!(
        Envelope::parse(&short_session, MAX_LEN).unwrap_err(),
        EnvelopeError::Malformed("session id is not 16 bytes")
    );
}

/// x5chain is unprotected; a certificate swapped in transit is caught against the signed x5t.
#[test]
fn swapped_certificate_chain_is_refused() {
    let f = fleet();
    let bytes = seal_from(
        &f.a,
        &f.b,
        &Message {
            include_chain: true,
            ..Message::default()
        },
    );
    let mut sign1 = CoseSign1::from_tagged_slice(&bytes).unwrap();
    sign1.unprotected.rest = vec![(
        Label::Int(labels::X5CHAIN),
        Value::Bytes(f.c.device_cert.clone()),
    )];
    let swapped = sign1.to_tagged_vec().unwrap();
    assert_eq!(reason(Envelope::parse(&swapped, MAX_LEN)), "key_mismatch");
}

#[test]
fn invalid_seal_requests_are_refused() {
    let f = fleet();
    let (sender, recipient) = (f.a.sender_keys(), f.b.recipient_keys());
    let request = SealRequest {
        sender: &sender,
        recipient: &recipient,
        data_type: "telemetry.temperature",
        session_id: &SESSION,
        seq: 1,
        iat: IAT,
        exp: IAT,
        payload: b"",
        include_chain: false,
    };
    let rng = ring::rand::SystemRandom::new();
    let cache = SharedSecretCache::new(1);
    assert_eq!(reason(seal(&request, &rng, &cache)), "invalid_seal_request");
    let empty_type = SealRequest {
        exp: EXP,
        data_type: "",
        ..request
    };
    assert_eq!(
        reason(seal(&empty_type, &rng, &cache)),
        "invalid_seal_request"
    );
    assert_eq!(
        reason(RecipientKeys::new(
            f.b.spiffe_id.clone(),
            &f.b.ka_public_key()[..33]
        )),
        "invalid_key"
    );
}
