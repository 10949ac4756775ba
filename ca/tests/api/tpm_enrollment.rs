//! The binding of a TPM to a device identity: one EK per device, re-enrollment only with the
//! EK bound, EK certificates checked against the configured manufacturer roots (swtpm's
//! local CA here), hostile enrollment inputs refused without a write.

use crate::support::*;
use crate::tpm::{
    boot, enroll_new_sensor, enrolled_tpm, sensor_token, start_tpm_enrollment, tpm_app, tpm_enroll,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_attestor::testing::SoftwareTpm;
use vouch_proto::ProblemCode;

/// Checks the status and problem code of a refused [`tpm_enroll`].
fn assert_refused_with(
    (status, p): (StatusCode, Value),
    want_status: StatusCode,
    want_code: ProblemCode,
) {
    assert_eq!(
        (status, p["code"].as_str()),
        (want_status, Some(want_code.as_str())),
        "{p}"
    );
}

#[tokio::test]
async fn re_enrolling_a_device_with_another_ek_is_refused_and_with_its_own_ek_is_allowed() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (mine, other) = (boot("fw-1", "cfg-a"), boot("fw-1", "cfg-a"));
    let device = enroll_new_sensor(&app, &mine.tpm).await;

    // An operator issues a token to re-enroll the device; another TPM presents it.
    let token = sensor_token(&app, Some(device.device_id())).await;
    let before = app.counts().await;
    let refused = tpm_enroll(&app, &other.tpm, &token).await.unwrap_err();
    assert_refused_with(refused, StatusCode::FORBIDDEN, ProblemCode::EkMismatch);
    assert_eq!(app.counts().await.devices, before.devices);
    assert_eq!(app.counts().await.certificates, before.certificates);

    // The device's own TPM may: same device id, a new certificate, the old one superseded.
    let again = tpm_enroll(&app, &mine.tpm, &token).await.unwrap();
    assert_eq!(again.device_id(), device.device_id());
    assert_ne!(again.serial(), device.serial());
    let r = app.renew(&device).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the superseded certificate renews nothing"
    );
}

#[tokio::test]
async fn an_ek_enrolled_as_one_device_cannot_enroll_as_another() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let booted = boot("fw-1", "cfg-a");
    enroll_new_sensor(&app, &booted.tpm).await;
    let refused = tpm_enroll(&app, &booted.tpm, &sensor_token(&app, None).await)
        .await
        .unwrap_err();
    assert_refused_with(
        refused,
        StatusCode::CONFLICT,
        ProblemCode::EkAlreadyEnrolled,
    );
}

#[tokio::test]
async fn a_re_enrollment_token_needs_a_tpm() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (_booted, device) = enrolled_tpm(&app).await;
    let token = sensor_token(&app, Some(device.device_id())).await;
    let (csr, _) = rcgen_csr();
    assert_problem(
        app.enroll_with_csr(&token, &csr).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::TokenRequiresTpm,
    )
    .await;
    // A device enrolled without a TPM has nothing to prove itself with: no re-enrollment
    // token (any TPM could otherwise claim it), and none that moves a device to another zone
    // (the certificate would name the token's zone while the registry keeps the device's).
    let plain = app.enroll("sensors").await;
    for (body, code) in [
        (
            json!({"zone": "sensors", "reenroll_device": plain.device_id()}),
            ProblemCode::DeviceHasNoTpm,
        ),
        (
            json!({"zone": "edge", "reenroll_device": device.device_id()}),
            ProblemCode::ZoneMismatch,
        ),
    ] {
        let r = app
            .post("/v1/bootstrap-tokens", Some(&app.admin), &body)
            .await;
        assert_problem(r, StatusCode::CONFLICT, code).await;
    }
    // And it cannot name a device that does not exist.
    let nobody =
        json!({"zone": "sensors", "reenroll_device": "dev-00000000000000000000000000000000"});
    let r = app
        .post("/v1/bootstrap-tokens", Some(&app.admin), &nobody)
        .await;
    assert!(r.status().is_client_error());
}

fn roots_der(pem_bundle: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(pem_bundle)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

async fn start_with_cert(
    app: &TestApp,
    tpm: &SoftwareTpm,
    cert: Option<&[u8]>,
) -> reqwest::Response {
    let token = sensor_token(app, None).await;
    let mut body = json!({"token": token,
        "ek_public": B64.encode(tpm.public_area("ek.pub")),
        "ak_public": B64.encode(tpm.public_area("ak.pub"))});
    if let Some(cert) = cert {
        body["ek_certificate"] = json!(B64.encode(cert));
    }
    app.post("/v1/enroll/tpm", None, &body).await
}

#[tokio::test]
async fn ek_certificates_must_chain_to_the_configured_manufacturer_roots() {
    let (tpm, cert, roots) = SoftwareTpm::start_with_ek_certificate();
    let (stranger, stranger_cert, _) = SoftwareTpm::start_with_ek_certificate();
    tpm.create_ek_ak();
    stranger.create_ek_ak();
    let settings = vouch_ca::api::Settings {
        tpm_roots: roots_der(&roots),
        tpm_trust_on_first_use: false,
        ..settings()
    };
    let app = spawn_app_full(Db::Sqlite, settings, Default::default()).await;

    // Its certificate, issued by the configured CA for this very EK.
    assert_eq!(
        start_with_cert(&app, &tpm, Some(&cert)).await.status(),
        StatusCode::CREATED
    );
    // No certificate.
    assert_problem(
        start_with_cert(&app, &tpm, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::EkCertificateRequired,
    )
    .await;
    // Another TPM's certificate, from another manufacturer CA.
    let (_, p) = problem(start_with_cert(&app, &tpm, Some(&stranger_cert)).await).await;
    assert_eq!(p["code"], ProblemCode::EkCertificateInvalid.as_str());
    assert!(
        p["detail"].as_str().unwrap().contains("does not certify"),
        "{p}"
    );
    // A TPM whose own certificate comes from a CA that is not configured.
    let (_, p) = problem(start_with_cert(&app, &stranger, Some(&stranger_cert)).await).await;
    assert_eq!(p["code"], ProblemCode::EkCertificateInvalid.as_str());
    assert!(p["detail"].as_str().unwrap().contains("chain"), "{p}");
    // Not a certificate at all; a certificate with bytes after it.
    let (_, p) = problem(start_with_cert(&app, &tpm, Some(b"not DER")).await).await;
    assert_eq!(p["code"], ProblemCode::EkCertificateInvalid.as_str());
    let mut trailing = cert.clone();
    trailing.push(0);
    let (_, p) = problem(start_with_cert(&app, &tpm, Some(&trailing)).await).await;
    assert_eq!(p["code"], ProblemCode::EkCertificateInvalid.as_str());
}

#[tokio::test]
async fn hostile_tpm_enrollment_inputs_are_refused_without_a_write() {
    let app = spawn_app(Db::Sqlite).await;
    let booted = boot("fw-1", "cfg-a");
    let token = sensor_token(&app, None).await;
    let ek = B64.encode(booted.tpm.public_area("ek.pub"));
    let ak_bytes = booted.tpm.public_area("ak.pub");
    let ak = B64.encode(&ak_bytes);
    let before = app.counts().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"token": token, "ek_public": "%%%", "ak_public": ak}),
            ProblemCode::TpmStructureInvalid.as_str(),
        ),
        (
            json!({"token": token, "ek_public": ek, "ak_public": B64.encode(&ak_bytes[..ak_bytes.len() - 3])}),
            ProblemCode::TpmStructureInvalid.as_str(),
        ),
        (
            json!({"token": token, "ek_public": ek, "ak_public": "A".repeat(40_000)}),
            ProblemCode::TpmStructureInvalid.as_str(),
        ),
        // The EK is a decryption key, not an attestation key.
        (
            json!({"token": token, "ek_public": ek, "ak_public": ek}),
            ProblemCode::NotAnAttestationKey.as_str(),
        ),
        (
            json!({"token": "not.a.jwt", "ek_public": ek, "ak_public": ak}),
            ProblemCode::TokenInvalid.as_str(),
        ),
    ];
    for (body, code) in cases {
        let (status, p) = problem(app.post("/v1/enroll/tpm", None, &body).await).await;
        assert!(status.is_client_error(), "{code}: {status}");
        assert_eq!(p["code"], code, "{p}");
    }
    // A made-up activation, and a secret that is not base64.
    let (csr, _) = rcgen_csr();
    for tpm in [
        json!({"activation_id": "00", "secret": B64.encode([1u8; 32])}),
        json!({"activation_id": "00", "secret": "%%%"}),
    ] {
        let r = app
            .post(
                "/v1/enroll",
                None,
                &json!({"token": token, "csr_pem": csr, "tpm": tpm}),
            )
            .await;
        assert!(r.status().is_client_error());
    }
    assert_eq!(app.counts().await, before);
    // The token survived all of it.
    assert_eq!(
        start_tpm_enrollment(&app, &booted.tpm, &token)
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn an_ek_on_the_allowlist_enrolls_without_a_certificate_and_others_need_one() {
    let listed = boot("fw-1", "cfg-a");
    let unlisted = boot("fw-1", "cfg-a");
    let fingerprint = vouch_ca::store::ek_fingerprint(&listed.tpm.public_area("ek.pub"));
    let settings = vouch_ca::api::Settings {
        tpm_ek_allowlist: [fingerprint].into_iter().collect(),
        tpm_trust_on_first_use: false,
        ..settings()
    };
    let app = spawn_app_full(Db::Sqlite, settings, Default::default()).await;
    assert_eq!(
        start_with_cert(&app, &listed.tpm, None).await.status(),
        StatusCode::CREATED
    );
    let p = assert_problem(
        start_with_cert(&app, &unlisted.tpm, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::EkCertificateRequired,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("allowlist"), "{p}");
}

/// Without manufacturer roots or an allowlist no EK is trusted: any RSA key could pose as a
/// TPM and get `high` trust. Trust on first use is a lab switch, off by default.
#[tokio::test]
async fn by_default_no_endorsement_key_is_trusted() {
    let settings = vouch_ca::api::Settings {
        tpm_trust_on_first_use: false,
        ..settings()
    };
    let app = spawn_app_full(Db::Sqlite, settings, Default::default()).await;
    let booted = boot("fw-1", "cfg-a");
    assert_problem(
        start_with_cert(&app, &booted.tpm, None).await,
        StatusCode::FORBIDDEN,
        ProblemCode::TpmEnrollmentUnconfigured,
    )
    .await;
    let counts = app.counts().await;
    assert_eq!((counts.devices, counts.used_tokens), (0, 0));
}
