//! Acceptance 4: renewal over mTLS; a revoked device cannot renew; revoked serials appear in
//! the CRL as `openssl crl` parses it.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::api::problem::ApiError;
use vouch_proto::enroll::{EnrollResponse, RenewRequest};
use vouch_proto::ProblemCode;

/// What `openssl crl -text` prints about the DER CRL `file` in `dir`.
fn openssl_crl_text(dir: &std::path::Path, file: &str) -> String {
    openssl(
        dir,
        &["crl", "-inform", "DER", "-in", file, "-noout", "-text"],
    )
}

/// The newest CRL in the registry.
async fn latest_crl(app: &TestApp) -> vouch_ca::store::StoredCrl {
    app.server
        .state
        .registry
        .latest_crl()
        .await
        .unwrap()
        .unwrap()
}

/// Uppercase hex as `openssl crl -text` prints serials.
fn openssl_serial(hex_serial: &str) -> String {
    hex_serial.to_uppercase()
}

#[tokio::test]
async fn renewal_revocation_and_crl() {
    let app = spawn_app(Db::Sqlite).await;
    let device = app.enroll("factory-1").await;

    // Renewal needs the device certificate.
    assert_problem(
        app.renew_over(&app.client).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::ClientCertificateRequired,
    )
    .await;

    let r = app.renew(&device).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let renewed: Value = r.json().await.unwrap();
    assert_eq!(renewed["device_id"].as_str(), Some(device.device_id()));
    assert_ne!(renewed["serial"].as_str(), Some(device.serial()));

    // Revoke (as an operator), then neither certificate renews.
    let r = app.revoke(device.device_id(), "stolen").await;
    assert_eq!(r.status(), StatusCode::OK);
    let revoked: Value = r.json().await.unwrap();
    let serials: Vec<String> = revoked["revoked_serials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials.len(), 2);
    let before = app.counts().await;
    app.assert_renewal_forbidden(&device, ProblemCode::DeviceRevoked)
        .await;
    assert_eq!(app.counts().await, before);
    let (s, _) = problem(app.revoke(device.device_id(), "again").await).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // The CRL lists both serials, parses with openssl and verifies against the issuing CA.
    let r = app.get("/v1/crl", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/pkix-crl");
    let der = r.bytes().await.unwrap();
    let dir = app.dir.path();
    write(dir, "crl.der", &der);
    write(
        dir,
        "chain.pem",
        device.body["ca_chain_pem"].as_str().unwrap().as_bytes(),
    );
    let text = openssl_crl_text(dir, "crl.der");
    for serial in &serials {
        assert!(
            text.contains(&openssl_serial(serial)),
            "{serial} not in\n{text}"
        );
    }
    assert!(text.contains("X509v3 CRL Number"));
    // `openssl crl` says `verify OK` on standard error.
    let out = run_successfully(
        std::process::Command::new("openssl")
            .args(["crl", "-inform", "DER", "-in", "crl.der"])
            .args(["-CAfile", "chain.pem", "-noout"])
            .current_dir(dir),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify OK"),
        "{out:?}"
    );

    // The registry shows the device revoked.
    let d = app.device_json(device.device_id()).await;
    assert_eq!(d["status"], "revoked");
    assert_eq!(d["revocation_reason"], "stolen");
}

#[tokio::test]
async fn crl_numbers_increase_and_an_empty_crl_parses() {
    let app = spawn_app(Db::Sqlite).await;
    let first = app.get("/v1/crl", None).await.bytes().await.unwrap();
    write(app.dir.path(), "empty.der", &first);
    let text = openssl_crl_text(app.dir.path(), "empty.der");
    assert!(text.contains("No Revoked Certificates"), "{text}");
    let device = app.enroll("z").await;
    app.revoke(device.device_id(), "r").await;
    let second = latest_crl(&app).await;
    assert!(second.number >= 2);
    // The stored CRL is served until a quarter of its validity has passed, then re-signed.
    let served = app.get("/v1/crl", None).await.bytes().await.unwrap();
    assert_eq!(served.as_ref(), second.der.as_slice());
    app.clock.advance(7 * 3600);
    app.get("/v1/crl", None).await;
    let third = latest_crl(&app).await;
    assert_eq!(third.number, second.number + 1);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let other = spawn_app(Db::Sqlite).await;
    let foreign = other.enroll("z").await;
    let client = app.device_client(&foreign);
    let (csr, _) = rcgen_csr();
    let result = client
        .post(app.url("/v1/renew"))
        .json(&json!({"csr_pem": csr}))
        .send()
        .await;
    assert!(result.is_err(), "the TLS handshake must fail: {result:?}");
}

/// `device` renews with a fresh CSR through the renewal flow itself, which runs `window`
/// between its early check and its write.
async fn renew_in_flow(
    app: &TestApp,
    device: &Enrolled,
    window: impl std::future::Future<Output = ()>,
) -> Result<EnrollResponse, ApiError> {
    use vouch_ca::ids::{DeviceId, Serial};
    let caller = vouch_ca::api::auth::DeviceCaller {
        serial: Serial::from_hex(device.serial()).unwrap(),
        device_id: DeviceId::parse(device.device_id()).unwrap(),
    };
    let request = RenewRequest {
        csr_pem: rcgen_csr().0,
        key_agreement_csr_pem: None,
        advertise: Vec::new(),
    };
    vouch_ca::flows::renew::renew(&app.server.state, &caller, request, window).await
}

/// Acceptance (issue 10, item 1): the renewal flow checks the device's standing early, then
/// signs, then records the certificate. A device whose standing changes between the early
/// check and the write (quarantined, stale, revoked) gets no certificate: the transaction that
/// records it checks everything again. The window is driven through the flow's `between` hook.
async fn standing_changed_in_the_window(db: Db) {
    use sqlx::Connection;
    let app = spawn_app(db).await;
    let changes: [(&str, ProblemCode); 3] = [
        (
            "UPDATE devices SET attestation = 'quarantined' WHERE id = $1",
            ProblemCode::DeviceQuarantined,
        ),
        (
            "UPDATE devices SET attestation = 'stale' WHERE id = $1",
            ProblemCode::DeviceStale,
        ),
        ("revoke", ProblemCode::DeviceRevoked),
    ];
    for (change, want) in changes {
        let device = app.enroll("factory-1").await;
        let before = app.counts().await;
        let window = async {
            if change == "revoke" {
                let r = app
                    .revoke(device.device_id(), "stolen during renewal")
                    .await;
                assert_eq!(r.status(), StatusCode::OK);
            } else {
                let mut conn = sqlx::AnyConnection::connect(&app.database_url)
                    .await
                    .unwrap();
                let done = sqlx::query(change)
                    .bind(device.device_id())
                    .execute(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(done.rows_affected(), 1);
            }
        };
        let refused = renew_in_flow(&app, &device, window)
            .await
            .expect_err("a device whose standing changed must get no certificate");
        assert_eq!(refused.code, want, "{change}: {}", refused.detail);
        let after = app.counts().await;
        assert_eq!(after.certificates, before.certificates, "{change}");
    }
    // The same flow with nothing happening in the window renews.
    let device = app.enroll("factory-1").await;
    let renewed = renew_in_flow(&app, &device, std::future::ready(()))
        .await
        .unwrap();
    assert_eq!(renewed.device_id, device.device_id());
}

#[tokio::test]
async fn a_device_quarantined_between_check_and_write_gets_no_certificate_sqlite() {
    standing_changed_in_the_window(Db::Sqlite).await;
}

#[tokio::test]
async fn a_device_quarantined_between_check_and_write_gets_no_certificate_postgres() {
    standing_changed_in_the_window(Db::Postgres).await;
}
