//! Which endorsement keys may enroll: allowlisted EKs, EKs certified by a configured
//! manufacturer CA (swtpm's local CA, certificates read back from the TPM's NV index), and
//! every way a certificate or the configuration can fall short, with the time as an input.

use std::collections::BTreeSet;
use vouch_attestor::endorsement::{
    check_endorsement, ek_fingerprint, EkAccepted, EkRefusal, EkTrust, MAX_EK_CERT_BYTES,
};
use vouch_attestor::testing::SoftwareTpm;
use vouch_attestor::tpm::Public;
use x509_parser::prelude::{FromDer, X509Certificate};

struct Manufactured {
    ek: Public,
    ek_bytes: Vec<u8>,
    cert: Vec<u8>,
    /// The issuing CA, then its root (DER).
    roots: Vec<Vec<u8>>,
    _tpm: SoftwareTpm,
}

fn manufactured() -> Manufactured {
    let (tpm, cert, roots_pem) = SoftwareTpm::start_with_ek_certificate();
    let (ek, _) = tpm.create_ek_ak();
    let roots = pem::parse_many(&roots_pem)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    Manufactured {
        ek,
        ek_bytes: tpm.public_area("ek.pub"),
        cert,
        roots,
        _tpm: tpm,
    }
}

/// A time inside every certificate's validity: the EK certificate's notBefore plus an hour.
fn valid_now(cert: &[u8]) -> i64 {
    let (_, c) = X509Certificate::from_der(cert).unwrap();
    c.validity().not_before.timestamp() + 3600
}

fn certificate_invalid(r: Result<EkAccepted, EkRefusal>, says: &str) {
    match r {
        Err(EkRefusal::CertificateInvalid(detail)) => {
            assert!(detail.contains(says), "`{detail}` should say `{says}`")
        }
        other => panic!("expected an invalid certificate ({says}), got {other:?}"),
    }
}

#[test]
fn with_nothing_configured_no_ek_is_trusted_unless_the_lab_opt_in_is_on() {
    let m = manufactured();
    let now = valid_now(&m.cert);
    let nothing = EkTrust::default();
    assert_eq!(
        check_endorsement(&nothing, &m.ek, &m.ek_bytes, Some(&m.cert), now),
        Err(EkRefusal::Unconfigured)
    );
    let lab = EkTrust {
        trust_on_first_use: true,
        ..EkTrust::default()
    };
    assert_eq!(
        check_endorsement(&lab, &m.ek, &m.ek_bytes, None, now),
        Ok(EkAccepted::TrustedOnFirstUse)
    );
    // Trust on first use is for servers that trust nothing else: with roots configured, an
    // EK without a certificate is refused even when the flag is on.
    let both = EkTrust {
        roots: m.roots.clone(),
        trust_on_first_use: true,
        ..EkTrust::default()
    };
    assert_eq!(
        check_endorsement(&both, &m.ek, &m.ek_bytes, None, now),
        Err(EkRefusal::CertificateRequired)
    );
}

#[test]
fn an_allowlisted_ek_needs_no_certificate_and_another_does() {
    let m = manufactured();
    let now = valid_now(&m.cert);
    let trust = EkTrust {
        allowlist: BTreeSet::from([ek_fingerprint(&m.ek_bytes)]),
        ..EkTrust::default()
    };
    assert_eq!(
        check_endorsement(&trust, &m.ek, &m.ek_bytes, None, now),
        Ok(EkAccepted::Allowlisted)
    );
    let other = EkTrust {
        allowlist: BTreeSet::from([ek_fingerprint(b"another EK")]),
        ..EkTrust::default()
    };
    assert_eq!(
        check_endorsement(&other, &m.ek, &m.ek_bytes, None, now),
        Err(EkRefusal::CertificateRequired)
    );
}

#[test]
fn a_certificate_must_certify_this_ek_chain_to_a_root_and_be_valid_now() {
    let m = manufactured();
    let stranger = manufactured();
    let now = valid_now(&m.cert);
    let trust = EkTrust {
        roots: m.roots.clone(),
        ..EkTrust::default()
    };
    assert_eq!(
        check_endorsement(&trust, &m.ek, &m.ek_bytes, Some(&m.cert), now),
        Ok(EkAccepted::Certified)
    );
    // Another TPM's certificate for this EK.
    certificate_invalid(
        check_endorsement(&trust, &m.ek, &m.ek_bytes, Some(&stranger.cert), now),
        "does not certify",
    );
    // A TPM certified by a manufacturer CA that is not configured.
    certificate_invalid(
        check_endorsement(
            &trust,
            &stranger.ek,
            &stranger.ek_bytes,
            Some(&stranger.cert),
            now,
        ),
        "does not chain",
    );
    // The root alone: the issuing CA is missing, so there is no chain.
    let root_only = EkTrust {
        roots: m.roots.get(1..).unwrap().to_vec(),
        ..EkTrust::default()
    };
    certificate_invalid(
        check_endorsement(&root_only, &m.ek, &m.ek_bytes, Some(&m.cert), now),
        "does not chain",
    );
    // The issuing CA alone: it is not self-signed, so nothing anchors it.
    let issuer_only = EkTrust {
        roots: m.roots.get(..1).unwrap().to_vec(),
        ..EkTrust::default()
    };
    certificate_invalid(
        check_endorsement(&issuer_only, &m.ek, &m.ek_bytes, Some(&m.cert), now),
        "does not chain",
    );
    // A second before the certificate's notBefore. (swtpm's EK certificates never expire:
    // their notAfter is the end of year 9999, past which no time is representable.)
    let (_, c) = X509Certificate::from_der(&m.cert).unwrap();
    let before = c.validity().not_before.timestamp() - 1;
    certificate_invalid(
        check_endorsement(&trust, &m.ek, &m.ek_bytes, Some(&m.cert), before),
        "not valid now",
    );
    let after = c.validity().not_after.timestamp() + 1;
    let after_result = check_endorsement(&trust, &m.ek, &m.ek_bytes, Some(&m.cert), after);
    assert!(after_result.is_err(), "{after_result:?}");
}

#[test]
fn malformed_certificates_are_refused_with_a_reason() {
    let m = manufactured();
    let now = valid_now(&m.cert);
    let trust = EkTrust {
        roots: m.roots.clone(),
        ..EkTrust::default()
    };
    let check = |der: &[u8]| check_endorsement(&trust, &m.ek, &m.ek_bytes, Some(der), now);
    certificate_invalid(check(b"not DER"), "does not parse");
    certificate_invalid(check(&[]), "does not parse");
    let mut trailing = m.cert.clone();
    trailing.push(0);
    certificate_invalid(check(&trailing), "trailing bytes");
    certificate_invalid(check(&vec![0x30; MAX_EK_CERT_BYTES + 1]), "too large");
    // Every truncation of a good certificate.
    for len in 0..m.cert.len() {
        assert!(
            check(m.cert.get(..len).unwrap()).is_err(),
            "truncated at {len}"
        );
    }
    // A flipped byte in the signed part breaks the signature: no chain.
    let mut flipped = m.cert.clone();
    let i = flipped.len() / 2;
    flipped[i] ^= 0x01;
    assert!(check(&flipped).is_err());
}
