//! Hostile inputs to every parser: truncations at every length, oversized counts and sizes,
//! wrong magic and types, trailing bytes, and random bytes. Each is an error, never a panic.

use proptest::prelude::*;
use vouch_attestor::eventlog::{self, Event, EventLog};
use vouch_attestor::reference::ReferenceValues;
use vouch_attestor::tpm::{PcrSelection, Public, Quote, Signature};
use vouch_attestor::ParseError;

/// A well-formed TPMS_ATTEST of a quote.
fn quote_bytes() -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&0xff54_4347u32.to_be_bytes());
    q.extend_from_slice(&0x8018u16.to_be_bytes());
    q.extend_from_slice(&34u16.to_be_bytes());
    q.extend_from_slice(&[0x00, 0x0b]);
    q.extend_from_slice(&[1u8; 32]);
    q.extend_from_slice(&4u16.to_be_bytes());
    q.extend_from_slice(b"nnnn");
    q.extend_from_slice(&[0u8; 17]); // clock, resetCount, restartCount, safe
    q.extend_from_slice(&7u64.to_be_bytes());
    q.extend_from_slice(&PcrSelection::sha256(&[0, 1, 2]).to_bytes());
    q.extend_from_slice(&32u16.to_be_bytes());
    q.extend_from_slice(&[9u8; 32]);
    q
}

fn log_bytes() -> Vec<u8> {
    eventlog::write_log(&[Event {
        pcr: 0,
        event_type: eventlog::EV_POST_CODE,
        sha256: Some([3u8; 32]),
        data: b"stage".to_vec(),
    }])
}

#[test]
fn a_well_formed_quote_parses_and_every_truncation_fails() {
    let q = quote_bytes();
    let parsed = Quote::parse(&q).unwrap();
    assert_eq!(parsed.extra_data, b"nnnn");
    assert_eq!(parsed.firmware_version, 7);
    assert_eq!(parsed.selection, PcrSelection::sha256(&[0, 1, 2]));
    for len in 0..q.len() {
        assert!(Quote::parse(&q[..len]).is_err(), "truncated to {len}");
    }
    let mut trailing = q.clone();
    trailing.push(0);
    assert_eq!(
        Quote::parse(&trailing),
        Err(ParseError::TrailingBytes("quote"))
    );
}

#[test]
fn wrong_magic_type_and_oversized_fields_are_refused() {
    let mut q = quote_bytes();
    q[0] = 0;
    assert!(matches!(Quote::parse(&q), Err(ParseError::BadMagic(_))));
    let mut q = quote_bytes();
    q[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
    assert!(matches!(
        Quote::parse(&q),
        Err(ParseError::Unsupported { .. })
    ));
    let mut q = quote_bytes();
    q[6] = 0xff; // qualified signer of 65,280+ bytes
    assert!(matches!(Quote::parse(&q), Err(ParseError::TooLarge { .. })));
    // A selection count of four billion banks.
    let mut q = quote_bytes();
    let at = 4 + 2 + 2 + 34 + 2 + 4 + 17 + 8;
    q[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Quote::parse(&q),
        Err(ParseError::TooLarge {
            what: "pcr selection count",
            ..
        })
    ));
    assert!(matches!(
        Quote::parse(&vec![0u8; 100_000]),
        Err(ParseError::TooLarge { .. })
    ));
}

#[test]
fn signatures_and_public_areas_are_parsed_strictly() {
    let mut sig = vec![0x00, 0x18, 0x00, 0x0b, 0x00, 0x02, 1, 2, 0x00, 0x01, 3];
    assert!(matches!(
        Signature::parse(&sig),
        Ok(Signature::Ecdsa { .. })
    ));
    sig.push(0);
    assert!(Signature::parse(&sig).is_err());
    assert!(matches!(
        Signature::parse(&[0x00, 0x1a, 0, 0]),
        Err(ParseError::Unsupported { .. })
    ));
    for len in 0..11 {
        assert!(Signature::parse(&sig[..len]).is_err());
    }
    assert!(Public::parse(&[]).is_err());
    assert!(Public::parse(&[0x00, 0x25, 0x00, 0x0b]).is_err());
    assert!(Public::parse_sized(&[0xff, 0xff]).is_err());
}

#[test]
fn event_logs_are_parsed_strictly() {
    let log = log_bytes();
    let parsed = EventLog::parse(&log).unwrap();
    assert_eq!(parsed.events.len(), 1);
    let header_len = 32 + u32::from_le_bytes(log[28..32].try_into().unwrap()) as usize;
    for len in 1..log.len() {
        // Cut exactly after the header, it is a valid log of no events.
        if len != header_len {
            assert!(EventLog::parse(&log[..len]).is_err(), "truncated to {len}");
        }
    }
    assert!(EventLog::parse(&log[..header_len])
        .unwrap()
        .events
        .is_empty());
    // Not crypto-agile: the Spec ID signature is wrong.
    let mut bad = log.clone();
    bad[32] = b'X';
    assert!(matches!(
        EventLog::parse(&bad),
        Err(ParseError::BadLogHeader(_))
    ));
    // First event of the wrong type.
    let mut bad = log.clone();
    bad[4] = 1;
    assert!(matches!(
        EventLog::parse(&bad),
        Err(ParseError::BadLogHeader(_))
    ));
    // A digest count of four billion, an event size of four gigabytes, PCR 200.
    for (offset, value) in [(8usize, u32::MAX), (8 + 4 + 2 + 32, u32::MAX), (0, 200)] {
        let mut bad = log.clone();
        let at = header_len + offset;
        bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
        assert!(EventLog::parse(&bad).is_err(), "offset {offset}");
    }
    assert!(matches!(
        EventLog::parse(&vec![0u8; eventlog::MAX_LOG_BYTES + 1]),
        Err(ParseError::TooLarge { .. })
    ));
}

#[test]
fn reference_values_are_checked() {
    for bad in [
        r#"{"device_classes": {"s": {"pcrs": [], "accepted": []}}}"#,
        r#"{"device_classes": {"s": {"pcrs": [0], "accepted": [{"name": "a", "firmware": {"0": "zz"}}]}}}"#,
        r#"{"device_classes": {"s": {"pcrs": [0], "accepted": [{"name": "a", "firmware": {"5": "00"}}]}}}"#,
        r#"{"device_classes": {"s": {"pcrs": [99], "accepted": [{"name": "a", "firmware": {}}]}}}"#,
        r#"{"device_classes": {}, "extra": 1}"#,
        "not json",
    ] {
        assert!(ReferenceValues::parse(bad.as_bytes()).is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Quote::parse(&data);
        let _ = Signature::parse(&data);
        let _ = Public::parse(&data);
        let _ = Public::parse_sized(&data);
        if let Ok(log) = EventLog::parse(&data) {
            let _ = log.replay();
        }
    }

    #[test]
    fn mutated_quotes_and_logs_never_panic(at in 0usize..200, byte in any::<u8>()) {
        let mut q = quote_bytes();
        if let Some(b) = q.get_mut(at) { *b = byte; }
        let _ = Quote::parse(&q);
        let mut l = log_bytes();
        if let Some(b) = l.get_mut(at) { *b = byte; }
        if let Ok(log) = EventLog::parse(&l) {
            let _ = log.replay();
        }
    }
}

mod submission {
    //! A submission's fields are bounded and decoded before any evidence is parsed; each
    //! failure names the field.
    use std::collections::BTreeMap;
    use vouch_attestor::submission::{
        decode_submission, EncodedSubmission, SubmissionError, MAX_PCR_VALUES,
    };
    use vouch_attestor::tpm::MAX_STRUCTURE_BYTES;

    const LOG_LIMIT: usize = 1024;

    fn decode(
        quote: &str,
        signature: &str,
        pcrs: &[(&str, &str)],
        log: Option<&str>,
    ) -> Result<vouch_attestor::submission::DecodedSubmission, SubmissionError> {
        let pcr_values: BTreeMap<String, String> = pcrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        decode_submission(
            &EncodedSubmission {
                quote,
                signature,
                pcr_values: &pcr_values,
                event_log: log,
            },
            LOG_LIMIT,
        )
    }

    #[test]
    fn a_good_submission_decodes_to_its_bytes() {
        let digest = "ab".repeat(32);
        let d = decode(
            "AQID",
            "BAU=",
            &[("0", &digest), ("23", &digest)],
            Some("Bg=="),
        )
        .unwrap();
        assert_eq!(d.attest, [1, 2, 3]);
        assert_eq!(d.signature, [4, 5]);
        assert_eq!(d.event_log.as_deref(), Some(&[6u8][..]));
        assert_eq!(
            d.pcr_values.keys().copied().collect::<Vec<_>>(),
            vec![0, 23]
        );
        assert_eq!(d.pcr_values[&0], [0xab; 32]);
        let e = d.evidence();
        assert_eq!((e.attest, e.signature), (&d.attest[..], &d.signature[..]));
    }

    #[test]
    fn each_bad_field_is_refused_and_named() {
        let digest = "ab".repeat(32);
        let big = "A".repeat(MAX_STRUCTURE_BYTES * 4 / 3 + 8);
        let cases: Vec<(Result<_, _>, SubmissionError)> = vec![
            (
                decode("%%", "AA==", &[], None),
                SubmissionError::NotBase64("quote"),
            ),
            (
                decode("AA==", "A", &[], None),
                SubmissionError::NotBase64("signature"),
            ),
            (
                decode(&big, "AA==", &[], None),
                SubmissionError::TooLarge("quote"),
            ),
            (
                decode("AA==", &big, &[], None),
                SubmissionError::TooLarge("signature"),
            ),
            (
                decode("AA==", "AA==", &[], Some(&"A".repeat(LOG_LIMIT * 2))),
                SubmissionError::TooLarge("event log"),
            ),
            (
                decode("AA==", "AA==", &[], Some("*")),
                SubmissionError::NotBase64("event log"),
            ),
            (
                decode("AA==", "AA==", &[("24", &digest)], None),
                SubmissionError::BadPcrIndex("24".into()),
            ),
            (
                decode("AA==", "AA==", &[("-1", &digest)], None),
                SubmissionError::BadPcrIndex("-1".into()),
            ),
            (
                decode("AA==", "AA==", &[("0123456789abcdef", &digest)], None),
                SubmissionError::BadPcrIndex("01234567".into()),
            ),
            (
                decode("AA==", "AA==", &[("7", "abcd")], None),
                SubmissionError::BadPcrValue(7),
            ),
            (
                decode("AA==", "AA==", &[("7", &"zz".repeat(32))], None),
                SubmissionError::BadPcrValue(7),
            ),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, Err(want), "case {i}");
        }
        let many: Vec<(String, String)> = (0..=MAX_PCR_VALUES)
            .map(|i| (format!("{i:02}"), digest.clone()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            decode("AA==", "AA==", &many, None),
            Err(SubmissionError::TooManyPcrs)
        );
    }
}
