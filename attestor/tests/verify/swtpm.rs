//! Quotes from a real software TPM: what passes, and each way a quote must be refused.

use std::collections::BTreeMap;
use vouch_attestor::quote::{verify_quote, Evidence, Expected, Verified, VerifyError};
use vouch_attestor::reference::{evaluate, ReferenceValues};
use vouch_attestor::testing::*;
use vouch_attestor::tpm::PcrSelection;

/// A booted device: its TPM, enrolled keys and event log.
struct Device {
    tpm: SoftwareTpm,
    ek_qn: Vec<u8>,
    ak: vouch_attestor::tpm::Public,
    log: Vec<u8>,
}

fn boot(firmware: &str, config: &str) -> Device {
    let tpm = SoftwareTpm::start();
    let (ek, ak) = tpm.create_ek_ak();
    let log = measure(&tpm, &boot_events(firmware, config));
    Device {
        ek_qn: ek_qualified_name(&ek),
        tpm,
        ak,
        log,
    }
}

/// A quote as the device sends it: attest, signature, PCR values.
type Quoted = (Vec<u8>, Vec<u8>, BTreeMap<u8, [u8; 32]>);

/// Verifies `quoted` as if `enrolled` (AK and EK) had been issued `nonce` for PCRs 0-8.
fn check(
    enrolled: (&vouch_attestor::tpm::Public, &[u8]),
    nonce: &[u8],
    quoted: &Quoted,
    log: Option<&[u8]>,
) -> Result<Verified, VerifyError> {
    let selection = PcrSelection::sha256(&QUOTED);
    verify_quote(
        &Expected {
            ak: enrolled.0,
            parent_qualified_name: enrolled.1,
            nonce,
            selection: &selection,
        },
        &Evidence {
            attest: &quoted.0,
            signature: &quoted.1,
            pcr_values: &quoted.2,
            event_log: log,
        },
    )
}

fn verify(device: &Device, nonce: &[u8], quoted: &[u8]) -> Result<Verified, VerifyError> {
    let q = device.tpm.quote(nonce, quoted);
    check((&device.ak, &device.ek_qn), nonce, &q, Some(&device.log))
}

fn references(sets: &[(&str, &str, &str)]) -> ReferenceValues {
    ReferenceValues::parse(reference_values_json(sets).to_string().as_bytes()).unwrap()
}

#[test]
fn a_real_quote_verifies_and_meets_its_reference_values() {
    let device = boot("fw-1", "cfg-a");
    let verified = verify(&device, b"nonce-0123456789abcdef", &QUOTED).unwrap();
    assert_eq!(verified.pcrs, expected_pcrs("fw-1", "cfg-a"));
    assert_eq!(verified.event_log.as_ref().unwrap().events.len(), 9);
    let refs = references(&[("fw-1", "fw-1", "cfg-a")]);
    assert_eq!(
        evaluate(&refs.device_classes["sensor"], &verified),
        Ok("fw-1".into())
    );
    // Another configuration fails the configuration check, with a reason.
    let refs = references(&[("fw-1", "fw-1", "cfg-b")]);
    let why = evaluate(&refs.device_classes["sensor"], &verified).unwrap_err();
    assert!(why.contains("configuration compliance"), "{why}");
    // A patch level above the TPM's firmware version fails.
    let mut strict = references(&[("fw-1", "fw-1", "cfg-a")]);
    strict.device_classes.get_mut("sensor").unwrap().accepted[0].min_firmware_version = u64::MAX;
    let why = evaluate(&strict.device_classes["sensor"], &verified).unwrap_err();
    assert!(why.contains("security patch level"), "{why}");
}

#[test]
fn an_unexpected_firmware_digest_fails_attestation() {
    let mut device = boot("fw-1", "cfg-a");
    // Firmware that measures something else into PCR 0 (and logs it honestly).
    let mut events = boot_events("fw-1", "cfg-a");
    let rogue = vouch_attestor::eventlog::Event {
        pcr: 0,
        event_type: vouch_attestor::eventlog::EV_POST_CODE,
        sha256: Some(sha256(b"implant")),
        data: b"implant".to_vec(),
    };
    device.tpm.extend(0, &sha256(b"implant"));
    events.push(rogue);
    device.log = vouch_attestor::eventlog::write_log(&events);
    let verified = verify(&device, b"n1", &QUOTED).unwrap();
    let refs = references(&[("fw-1", "fw-1", "cfg-a")]);
    let why = evaluate(&refs.device_classes["sensor"], &verified).unwrap_err();
    assert!(why.contains("firmware integrity: PCR 0"), "{why}");
}

#[test]
fn an_event_log_that_does_not_replay_is_refused() {
    let device = boot("fw-1", "cfg-a");
    // Extended but not logged: the log hides a measurement.
    device.tpm.extend(3, &sha256(b"hidden"));
    assert_eq!(
        verify(&device, b"n2", &QUOTED).unwrap_err(),
        VerifyError::EventLogMismatch(3)
    );
}

#[test]
fn a_replayed_quote_and_a_foreign_nonce_are_refused() {
    let device = boot("fw-1", "cfg-a");
    let me = (&device.ak, device.ek_qn.as_slice());
    let q = device.tpm.quote(b"first-nonce", &QUOTED);
    assert!(check(me, b"first-nonce", &q, Some(&device.log)).is_ok());
    // The same quote answering a later challenge.
    assert_eq!(
        check(me, b"second-nonce", &q, Some(&device.log)).unwrap_err(),
        VerifyError::NonceMismatch
    );
    // A quote made for a nonce issued to another device.
    let foreign = device.tpm.quote(b"other-device-nonce", &QUOTED);
    assert_eq!(
        check(me, b"my-nonce", &foreign, None).unwrap_err(),
        VerifyError::NonceMismatch
    );
    // PCR values other than the quoted ones.
    let mut forged = q.clone();
    forged.2.insert(0, [7u8; 32]);
    assert_eq!(
        check(me, b"first-nonce", &forged, None).unwrap_err(),
        VerifyError::PcrDigestMismatch
    );
}

#[test]
fn a_quote_signed_by_another_tpm_is_refused() {
    let enrolled = boot("fw-1", "cfg-a");
    let other = boot("fw-1", "cfg-a");
    let q = other.tpm.quote(b"nonce", &QUOTED);
    let r = check(
        (&enrolled.ak, &enrolled.ek_qn),
        b"nonce",
        &q,
        Some(&other.log),
    );
    assert_eq!(r.unwrap_err(), VerifyError::BadSignature);
    // The other TPM's AK under the enrolled EK: the qualified signer gives it away.
    let r = check((&other.ak, &enrolled.ek_qn), b"nonce", &q, None);
    assert_eq!(r.unwrap_err(), VerifyError::WrongSigner);
}

#[test]
fn a_selection_other_than_requested_is_refused() {
    let device = boot("fw-1", "cfg-a");
    let r = verify(&device, b"nonce", &[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(r.unwrap_err(), VerifyError::SelectionMismatch);
}

#[test]
fn the_ek_is_not_an_attestation_key() {
    let tpm = SoftwareTpm::start();
    let (ek, _) = tpm.create_ek_ak();
    assert!(matches!(
        vouch_attestor::quote::check_attestation_key(&ek),
        Err(VerifyError::NotAnAttestationKey(_))
    ));
}

#[test]
fn a_rollout_window_accepts_both_firmware_sets_until_one_is_removed() {
    let old = boot("fw-N", "cfg-a");
    let new = boot("fw-N+1", "cfg-a");
    let window = references(&[("fw-N", "fw-N", "cfg-a"), ("fw-N+1", "fw-N+1", "cfg-a")]);
    let class = &window.device_classes["sensor"];
    let old_quote = verify(&old, b"a", &QUOTED).unwrap();
    let new_quote = verify(&new, b"b", &QUOTED).unwrap();
    assert_eq!(evaluate(class, &old_quote), Ok("fw-N".into()));
    assert_eq!(evaluate(class, &new_quote), Ok("fw-N+1".into()));

    let done = references(&[("fw-N+1", "fw-N+1", "cfg-a")]);
    let class = &done.device_classes["sensor"];
    let old_quote = verify(&old, b"c", &QUOTED).unwrap();
    assert!(evaluate(class, &old_quote).is_err());
    assert_eq!(
        evaluate(class, &verify(&new, b"d", &QUOTED).unwrap()),
        Ok("fw-N+1".into())
    );
}

#[test]
fn a_software_quote_for_load_tests_verifies_and_is_refused_like_a_tpm_one() {
    use vouch_attestor::tpm::Public;
    let soft = SoftwareAk::new();
    let (ak, ek) = (
        Public::parse(&soft.ak_public).unwrap(),
        Public::parse(&soft.ek_public).unwrap(),
    );
    vouch_attestor::quote::check_attestation_key(&ak).unwrap();
    let ek_qn = ek_qualified_name(&ek);
    let values = expected_pcrs("fw-1", "cfg-a");
    let log = vouch_attestor::eventlog::write_log(&boot_events("fw-1", "cfg-a"));
    let (attest, signature) = soft.quote(b"nonce-1", &values);
    let quoted = (attest, signature, values);
    let verified = check((&ak, &ek_qn), b"nonce-1", &quoted, Some(&log)).unwrap();
    let refs = references(&[("fw-1", "fw-1", "cfg-a")]);
    assert_eq!(
        evaluate(&refs.device_classes["sensor"], &verified),
        Ok("fw-1".into())
    );
    assert_eq!(
        check((&ak, &ek_qn), b"nonce-2", &quoted, Some(&log)),
        Err(VerifyError::NonceMismatch)
    );
    let other = SoftwareAk::new();
    let other_ak = Public::parse(&other.ak_public).unwrap();
    assert_eq!(
        check((&other_ak, &ek_qn), b"nonce-1", &quoted, Some(&log)),
        Err(VerifyError::BadSignature)
    );
}
