//! Credential activation against a real TPM: a credential made in software for the AK's name
//! under the EK is recovered by that TPM, and by no other AK or TPM.

use ring::rand::SystemRandom;
use vouch_attestor::credential::{kdfa, make_credential, CredentialError};
use vouch_attestor::testing::*;

#[test]
fn the_tpm_holding_the_ek_and_ak_recovers_the_credential() {
    let tpm = SoftwareTpm::start();
    let (ek, ak) = tpm.create_ek_ak();
    let rng = SystemRandom::new();
    let secret = b"enrollment-challenge-0123456789a";
    let made = make_credential(&ek, &ak.name(), secret, &rng).unwrap();
    let recovered = tpm
        .activate_credential(&made.id_object, &made.encrypted_secret)
        .unwrap();
    assert_eq!(recovered, secret);
}

#[test]
fn a_credential_for_another_ak_or_another_ek_is_not_recovered() {
    let device = SoftwareTpm::start();
    let (ek, _ak) = device.create_ek_ak();
    let other = SoftwareTpm::start();
    let (other_ek, other_ak) = other.create_ek_ak();
    let rng = SystemRandom::new();
    // Bound to a name that is not the device's AK: the TPM's integrity check fails.
    let made = make_credential(&ek, &other_ak.name(), b"secret", &rng).unwrap();
    assert!(device
        .activate_credential(&made.id_object, &made.encrypted_secret)
        .is_err());
    // Encrypted to another TPM's EK: this TPM cannot unwrap the seed.
    let (_, ak) = (ek.clone(), device_ak(&device));
    let made = make_credential(&other_ek, &ak.name(), b"secret", &rng).unwrap();
    assert!(device
        .activate_credential(&made.id_object, &made.encrypted_secret)
        .is_err());
}

fn device_ak(tpm: &SoftwareTpm) -> vouch_attestor::tpm::Public {
    vouch_attestor::tpm::Public::parse_sized(&std::fs::read(tpm.path("ak.pub")).unwrap()).unwrap()
}

#[test]
fn only_rsa_eks_and_digest_sized_credentials_are_accepted() {
    let tpm = SoftwareTpm::start();
    let (ek, ak) = tpm.create_ek_ak();
    let rng = SystemRandom::new();
    assert!(matches!(
        make_credential(&ak, &ak.name(), b"x", &rng),
        Err(CredentialError::UnsupportedEk(_))
    ));
    assert_eq!(
        make_credential(&ek, &ak.name(), &[], &rng),
        Err(CredentialError::BadCredential)
    );
    assert_eq!(
        make_credential(&ek, &ak.name(), &[0u8; 65], &rng),
        Err(CredentialError::BadCredential)
    );
}

#[test]
fn kdfa_gives_the_requested_length_and_depends_on_every_input() {
    let base = kdfa(b"seed", "STORAGE", b"name", b"", 128);
    assert_eq!(base.len(), 16);
    assert_eq!(kdfa(b"seed", "INTEGRITY", b"", b"", 256).len(), 32);
    assert_eq!(kdfa(b"seed", "X", b"", b"", 520).len(), 65);
    assert_ne!(kdfa(b"seed2", "STORAGE", b"name", b"", 128), base);
    assert_ne!(kdfa(b"seed", "STORAGE2", b"name", b"", 128), base);
    assert_ne!(kdfa(b"seed", "STORAGE", b"name2", b"", 128), base);
    assert_eq!(kdfa(b"seed", "STORAGE", b"name", b"", 128), base);
}
