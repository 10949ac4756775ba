//! The attestation verifier's parsers (TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC, the TCG
//! event log and its replay), the decoding of a quote submission and the EK certificate check
//! never panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use vouch_attestor::endorsement::{check_endorsement, EkTrust};
use vouch_attestor::eventlog::EventLog;
use vouch_attestor::submission::{decode_submission, EncodedSubmission};
use vouch_attestor::tpm::{Public, PublicKey, Quote, Signature};

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    let _ = Signature::parse(data);
    let _ = Public::parse(data);
    let _ = Public::parse_sized(data);
    if let Ok(log) = EventLog::parse(data) {
        let _ = log.replay();
    }

    // The input as a submission: its text split into fields at each `|`.
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('|');
    let mut next = || fields.next().unwrap_or_default().to_owned();
    let (quote, signature, index, value, log) = (next(), next(), next(), next(), next());
    let pcr_values = BTreeMap::from([(index, value)]);
    let _ = decode_submission(
        &EncodedSubmission {
            quote: &quote,
            signature: &signature,
            pcr_values: &pcr_values,
            event_log: Some(&log),
        },
        64 * 1024,
    );

    // The input as an EK certificate, and as the configured roots.
    let ek = Public {
        name_alg: 0x000b,
        attributes: 0,
        scheme: 0x0010,
        symmetric: None,
        key: PublicKey::Rsa {
            modulus: data.iter().rev().take(256).copied().collect(),
            exponent: 65537,
        },
        raw: data.to_vec(),
    };
    let trust = EkTrust {
        roots: vec![data.to_vec()],
        ..EkTrust::default()
    };
    let _ = check_endorsement(&trust, &ek, data, Some(data), 1_700_000_000);
});
