//! The attestation verifier's parsers (TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC, the TCG
//! event log and its replay) never panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vouch_attestor::eventlog::EventLog;
use vouch_attestor::tpm::{Public, Quote, Signature};

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    let _ = Signature::parse(data);
    let _ = Public::parse(data);
    let _ = Public::parse_sized(data);
    if let Ok(log) = EventLog::parse(data) {
        let _ = log.replay();
    }
});
