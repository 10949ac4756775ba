//! The quoter against a real swtpm: its quotes verify with the attestor, its credential
//! activation recovers what the attestor's MakeCredential wrapped (and only for its own AK),
//! and nothing stays loaded in the TPM after any operation, failed ones included.

use crate::support::*;
use ring::rand::SystemRandom;
use vouch_agent::tpm::{AkBlobs, TpmError};
use vouch_attestor::credential::make_credential;
use vouch_attestor::quote::{verify_quote, Evidence, Expected, VerifyError};
use vouch_attestor::tpm::{qualified_name, PcrSelection, Public, RH_ENDORSEMENT};

const PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 8];

/// The EK and AK public areas as the server parses them from enrollment.
fn enrolled(tpm: &SoftwareTpm) -> (Public, AkBlobs, Public) {
    let mut t = open(tpm);
    let endorsement = t.endorsement().unwrap();
    let ek = Public::parse(&endorsement.public).unwrap();
    let blobs = t.create_ak().unwrap();
    let ak = Public::parse(&blobs.public).unwrap();
    (ek, blobs, ak)
}

#[test]
fn a_quote_verifies_with_the_attestor() {
    let tpm = SoftwareTpm::start();
    let (ek, blobs, ak) = enrolled(&tpm);
    let mut t = open(&tpm);
    for pcr in 0..8u8 {
        t.pcr_extend(pcr, &sha256(format!("firmware stage {pcr}").as_bytes()))
            .unwrap();
    }
    let nonce = sha256(b"nonce");
    let quoted = t.quote(&blobs, &nonce, &PCRS).unwrap();
    assert_eq!(quoted.pcr_values.keys().copied().collect::<Vec<_>>(), PCRS);
    assert_ne!(quoted.pcr_values[&0], [0u8; 32]);
    assert_eq!(quoted.pcr_values[&8], [0u8; 32]);

    let ek_qn = qualified_name(&RH_ENDORSEMENT, &ek.name());
    let selection = PcrSelection::sha256(&PCRS);
    let expected = Expected {
        ak: &ak,
        parent_qualified_name: &ek_qn,
        nonce: &nonce,
        selection: &selection,
    };
    let evidence = Evidence {
        attest: &quoted.attest,
        signature: &quoted.signature,
        pcr_values: &quoted.pcr_values,
        event_log: None,
    };
    verify_quote(&expected, &evidence).unwrap();

    // Another nonce, or values that are not the quoted ones, are refused.
    let other = sha256(b"other");
    assert_eq!(
        verify_quote(
            &Expected {
                nonce: &other,
                ..expected.clone()
            },
            &evidence
        )
        .unwrap_err(),
        VerifyError::NonceMismatch
    );
    let mut tampered = quoted.pcr_values.clone();
    tampered.insert(3, [7u8; 32]);
    assert_eq!(
        verify_quote(
            &expected,
            &Evidence {
                pcr_values: &tampered,
                ..evidence
            }
        )
        .unwrap_err(),
        VerifyError::PcrDigestMismatch
    );
}

#[test]
fn the_ak_reloads_after_a_new_connection_and_quotes_any_selection() {
    let tpm = SoftwareTpm::start();
    let (ek, blobs, ak) = enrolled(&tpm);
    // A fresh connection recreates the same EK and reloads the AK from its blobs.
    let mut t = open(&tpm);
    assert_eq!(Public::parse(&t.endorsement().unwrap().public).unwrap(), ek);
    assert_eq!(t.endorsement().unwrap().certificate, None);
    let pcrs = [23u8, 0, 16, 9];
    let quoted = t.quote(&blobs, b"n", &pcrs).unwrap();
    assert_eq!(
        quoted.pcr_values.keys().copied().collect::<Vec<_>>(),
        [0, 9, 16, 23]
    );
    let ek_qn = qualified_name(&RH_ENDORSEMENT, &ek.name());
    verify_quote(
        &Expected {
            ak: &ak,
            parent_qualified_name: &ek_qn,
            nonce: b"n",
            selection: &PcrSelection::sha256(&pcrs),
        },
        &Evidence {
            attest: &quoted.attest,
            signature: &quoted.signature,
            pcr_values: &quoted.pcr_values,
            event_log: None,
        },
    )
    .unwrap();
}

#[test]
fn the_ek_certificate_is_read_from_nv_when_the_tpm_has_one() {
    let (tpm, der, _ca) = SoftwareTpm::start_with_ek_certificate();
    let endorsement = open(&tpm).endorsement().unwrap();
    assert_eq!(endorsement.certificate, Some(der));
    assert_eq!(open(&tpm).loaded_handles().unwrap(), 0);
}

#[test]
fn credential_activation_recovers_the_secret_for_its_own_ak_only() {
    let tpm = SoftwareTpm::start();
    let (ek, blobs, ak) = enrolled(&tpm);
    let rng = SystemRandom::new();
    let secret = sha256(b"activation secret");
    let made = make_credential(&ek, &ak.name(), &secret, &rng).unwrap();
    let mut t = open(&tpm);
    let recovered = t
        .activate_credential(&blobs, &made.id_object, &made.encrypted_secret)
        .unwrap();
    assert_eq!(recovered, secret);

    // A credential made for another AK of the same TPM is not recovered with this one.
    let other_blobs = t.create_ak().unwrap();
    let other_ak = Public::parse(&other_blobs.public).unwrap();
    let made = make_credential(&ek, &other_ak.name(), &secret, &rng).unwrap();
    assert!(matches!(
        t.activate_credential(&blobs, &made.id_object, &made.encrypted_secret),
        Err(TpmError::Command { .. })
    ));
    assert_eq!(
        t.activate_credential(&other_blobs, &made.id_object, &made.encrypted_secret)
            .unwrap(),
        secret
    );

    // Nor one encrypted to another TPM's EK.
    let other_tpm = SoftwareTpm::start();
    let (other_ek, _, _) = enrolled(&other_tpm);
    let made = make_credential(&other_ek, &ak.name(), &secret, &rng).unwrap();
    assert!(t
        .activate_credential(&blobs, &made.id_object, &made.encrypted_secret)
        .is_err());

    // Size prefixes that do not match are refused before the TPM sees them.
    let made = make_credential(&ek, &ak.name(), &secret, &rng).unwrap();
    assert!(matches!(
        t.activate_credential(&blobs, &made.id_object[2..], &made.encrypted_secret),
        Err(TpmError::Input(_))
    ));
    assert_eq!(t.loaded_handles().unwrap(), 0);
}

#[test]
fn fifty_quotes_and_failures_leave_nothing_loaded() {
    let tpm = SoftwareTpm::start();
    let (ek, blobs, _) = enrolled(&tpm);
    let rng = SystemRandom::new();
    // One connection for everything: handles must be flushed by the code, not by a
    // connection closing.
    let mut t = open(&tpm);
    assert_eq!(t.loaded_handles().unwrap(), 0);
    for i in 0..50u32 {
        t.quote(&blobs, &i.to_be_bytes(), &PCRS).unwrap();
        assert_eq!(t.loaded_handles().unwrap(), 0, "after quote {i}");
    }
    // Failures inside the TPM, after the EK and the AK were loaded.
    let bad_credential = make_credential(&ek, b"\x00\x0bnot the AK name", b"s", &rng).unwrap();
    for _ in 0..10 {
        assert!(t
            .activate_credential(
                &blobs,
                &bad_credential.id_object,
                &bad_credential.encrypted_secret
            )
            .is_err());
        assert_eq!(t.loaded_handles().unwrap(), 0);
    }
    // A damaged AK blob fails to load after the EK was created.
    let mut damaged = blobs.clone();
    let last = damaged.private.len() - 1;
    damaged.private[last] ^= 1;
    for _ in 0..10 {
        assert!(t.quote(&damaged, b"n", &PCRS).is_err());
        assert_eq!(t.loaded_handles().unwrap(), 0);
    }
    // And the TPM still works.
    t.quote(&blobs, b"n", &PCRS).unwrap();
}

#[test]
fn bad_inputs_are_refused_without_reaching_the_tpm() {
    let tpm = SoftwareTpm::start();
    let (_, blobs, _) = enrolled(&tpm);
    let mut t = open(&tpm);
    assert!(matches!(
        t.quote(&blobs, &[0u8; 65], &PCRS),
        Err(TpmError::Input(_))
    ));
    assert!(matches!(
        t.quote(&blobs, b"n", &[]),
        Err(TpmError::Input(_))
    ));
    assert!(matches!(
        t.quote(&blobs, b"n", &[24]),
        Err(TpmError::Input(_))
    ));
    assert!(matches!(
        t.pcr_extend(24, &[0; 32]),
        Err(TpmError::Input(_))
    ));
    let garbage = AkBlobs {
        private: vec![1, 2, 3],
        public: vec![0xff; 10],
    };
    assert!(matches!(
        t.quote(&garbage, b"n", &PCRS),
        Err(TpmError::Input(_))
    ));
    assert_eq!(t.loaded_handles().unwrap(), 0);
}

#[test]
fn no_tpm_listening_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err =
        vouch_agent::tpm::Tpm::open(&format!("swtpm:host=127.0.0.1,port={port}")).unwrap_err();
    assert!(err.to_string().contains("connection"), "{err}");
    assert!(vouch_agent::tpm::Tpm::open("nonsense:").is_err());
}

#[test]
fn the_leak_check_sees_an_object_left_behind() {
    let tpm = SoftwareTpm::start();
    // tpm2-tools leave the primary they create loaded (there is no resource manager).
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("tpm2_createprimary")
        .args(["-C", "e", "-c", "primary.ctx"])
        .current_dir(dir.path())
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .env("TSS2_LOG", "all+NONE")
        .output()
        .expect("tpm2-tools are installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(open(&tpm).loaded_handles().unwrap(), 1);
}
