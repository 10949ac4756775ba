//! Key-agreement certificates and the peer directory: a device asks, with a second CSR, for
//! a certificate of its ECDH P-256 key beside its device certificate; peers fetch both (and
//! the device's delivery endpoints) from `GET /v1/peers/{id}`. The key-agreement certificate
//! shares the device certificate's identity, validity and standing, and authenticates nothing.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_proto::ProblemCode;
use x509_parser::prelude::*;

/// A device enrolled with a key-agreement key, and that key (PEM).
struct MessagingDevice {
    enrolled: Enrolled,
    ka_key_pem: String,
}

fn p256_csr() -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (csr, key)
}

async fn enroll_body(app: &TestApp, zone: &str, extra: Value) -> reqwest::Response {
    let token = app.bootstrap_token(zone).await;
    let (csr, _) = rcgen_csr();
    let mut body = json!({"token": token, "csr_pem": csr});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.post("/v1/enroll", None, &body).await
}

async fn enroll_for_messages(app: &TestApp, zone: &str, advertise: &[&str]) -> MessagingDevice {
    let token = app.bootstrap_token(zone).await;
    let (csr, key) = p256_csr();
    let (ka_csr, ka_key) = p256_csr();
    let r = app
        .post(
            "/v1/enroll",
            None,
            &json!({"token": token, "csr_pem": csr, "key_agreement_csr_pem": ka_csr,
                    "advertise": advertise}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    MessagingDevice {
        enrolled: Enrolled {
            body: r.json().await.unwrap(),
            key_pem: key.serialize_pem(),
        },
        ka_key_pem: ka_key.serialize_pem(),
    }
}

fn der_of(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

async fn peer(app: &TestApp, asker: &Enrolled, id: &str) -> reqwest::Response {
    client_for(&app.root_pem(), Some(&asker.identity_pem()))
        .get(app.url(&format!("/v1/peers/{id}")))
        .send()
        .await
        .unwrap()
}

async fn expect_problem(r: reqwest::Response, status: StatusCode, code: ProblemCode) {
    let (got, p) = problem(r).await;
    assert_eq!(
        (got, p["code"].as_str()),
        (status, Some(code.as_str())),
        "{p}"
    );
}

#[tokio::test]
async fn a_key_agreement_certificate_comes_with_the_device_certificate() {
    let app = spawn_app(Db::Sqlite).await;
    let device = enroll_for_messages(&app, "sensors", &["https://10.0.0.7:8444"]).await;
    let body = &device.enrolled.body;
    let device_der = der_of(body["certificate_pem"].as_str().unwrap());
    let ka_pem = body["key_agreement_certificate_pem"].as_str().unwrap();
    let ka_der = der_of(ka_pem);
    let (_, dev) = X509Certificate::from_der(&device_der).unwrap();
    let (_, ka) = X509Certificate::from_der(&ka_der).unwrap();

    // The same identity, issuer and validity; its own serial.
    assert_eq!(ka.subject().as_raw(), dev.subject().as_raw());
    assert_eq!(ka.issuer().as_raw(), dev.issuer().as_raw());
    assert_eq!(ka.validity().not_before, dev.validity().not_before);
    assert_eq!(ka.validity().not_after, dev.validity().not_after);
    assert_ne!(ka.raw_serial(), dev.raw_serial());
    let uris = |c: &X509Certificate<'_>| -> Vec<String> {
        c.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect()
    };
    assert_eq!(uris(&ka), uris(&dev));
    assert_eq!(
        uris(&ka),
        vec![format!("URI({:?})", body["spiffe_id"].as_str().unwrap())]
    );
    // keyUsage keyAgreement only, critical; no extended key usage; not a CA.
    let ku = ka.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_agreement());
    assert_eq!(ku.value.flags, 1 << 4, "keyAgreement is the only bit");
    assert!(ka.extended_key_usage().unwrap().is_none());
    assert!(!ka.basic_constraints().unwrap().unwrap().value.ca);
    // The device key only signs.
    let dev_ku = dev.key_usage().unwrap().unwrap();
    assert!(dev_ku.value.digital_signature() && !dev_ku.value.key_agreement());
    // It certifies the key-agreement key, not the device key.
    let ka_key = rcgen::KeyPair::from_pem(&device.ka_key_pem).unwrap();
    assert_eq!(
        ka.public_key().subject_public_key.data.as_ref(),
        ka_key.public_key_raw()
    );
    assert_ne!(
        ka.public_key().raw,
        dev.public_key().raw,
        "two keys, two purposes"
    );

    // openssl accepts its chain.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ka.pem", ka_pem.as_bytes());
    write(
        dir.path(),
        "chain.pem",
        body["ca_chain_pem"].as_str().unwrap().as_bytes(),
    );
    write(dir.path(), "root.pem", &app.root_pem());
    let out = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
            "ka.pem",
        ],
    );
    assert!(out.contains("ka.pem: OK"), "{out}");

    // Without a key-agreement CSR the answer is as before.
    let plain = app.enroll("sensors").await;
    assert!(plain.body.get("key_agreement_certificate_pem").is_none());
}

#[tokio::test]
async fn key_agreement_requests_are_checked_and_refusals_write_nothing() {
    let app = spawn_app(Db::Sqlite).await;
    let before = app.counts().await;
    let p384 = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    };
    let (ka_csr, _) = p256_csr();
    let cases: Vec<(Value, StatusCode, ProblemCode)> = vec![
        (
            json!({"key_agreement_csr_pem": p384}),
            StatusCode::BAD_REQUEST,
            ProblemCode::CsrUnsupportedKey,
        ),
        (
            json!({"key_agreement_csr_pem": "not a CSR"}),
            StatusCode::BAD_REQUEST,
            ProblemCode::CsrMalformed,
        ),
        (
            json!({"advertise": ["https://gw:8444"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            json!({"key_agreement_csr_pem": ka_csr, "advertise": ["http://plain-text"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            json!({"key_agreement_csr_pem": ka_csr, "advertise": ["https://a", "https://b", "https://c", "https://d", "https://e"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
    ];
    for (extra, status, code) in cases {
        expect_problem(enroll_body(&app, "sensors", extra).await, status, code).await;
    }
    // One key for both purposes.
    let token = app.bootstrap_token("sensors").await;
    let (csr, _) = p256_csr();
    let r = app
        .post(
            "/v1/enroll",
            None,
            &json!({"token": token, "csr_pem": csr, "key_agreement_csr_pem": csr}),
        )
        .await;
    let (status, p) = problem(r).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p["detail"].as_str().unwrap().contains("device key"), "{p}");
    let after = app.counts().await;
    assert_eq!(
        (after.devices, after.certificates),
        (before.devices, before.certificates)
    );
}

async fn check_directory(db: Db) {
    let app = spawn_app(db).await;
    let sensor = enroll_for_messages(&app, "sensors", &[]).await;
    let gateway = enroll_for_messages(
        &app,
        "edge",
        &["https://gw.local:8444", "mqtt://broker.local:1883"],
    )
    .await;
    let gw_id = gateway.enrolled.device_id().to_owned();

    // A device reads another's current certificates and endpoints.
    let r = peer(&app, &sensor.enrolled, &gw_id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let record: Value = r.json().await.unwrap();
    let g = &gateway.enrolled.body;
    assert_eq!(record["device_id"], gw_id.as_str());
    assert_eq!(record["spiffe_id"], g["spiffe_id"]);
    assert_eq!(record["zone"], "edge");
    assert_eq!(record["certificate_pem"], g["certificate_pem"]);
    assert_eq!(
        record["key_agreement_certificate_pem"],
        g["key_agreement_certificate_pem"]
    );
    assert_eq!(record["ca_chain_pem"], g["ca_chain_pem"]);
    assert_eq!(
        record["endpoints"],
        json!(["https://gw.local:8444", "mqtt://broker.local:1883"])
    );
    // The facts policy sees: its zone, trust without a TPM, standing.
    assert_eq!(record["facts"]["zone"], "edge");
    assert_eq!(record["facts"]["trust"], "low");
    assert_eq!(record["facts"]["status"], "active");

    // Not without a client certificate; not for a device that does not exist; not for one
    // that has no key-agreement certificate.
    let anonymous = app
        .client
        .get(app.url(&format!("/v1/peers/{gw_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    expect_problem(
        peer(&app, &sensor.enrolled, &"0".repeat(32)).await,
        StatusCode::NOT_FOUND,
        ProblemCode::DeviceNotFound,
    )
    .await;
    expect_problem(
        peer(&app, &sensor.enrolled, "not-a-device-id").await,
        StatusCode::NOT_FOUND,
        ProblemCode::DeviceNotFound,
    )
    .await;
    let plain = app.enroll("edge").await;
    expect_problem(
        peer(&app, &sensor.enrolled, plain.device_id()).await,
        StatusCode::NOT_FOUND,
        ProblemCode::NoKeyAgreementCertificate,
    )
    .await;

    // A renewal with a new key-agreement key: the directory serves the new pair.
    let (csr, key) = p256_csr();
    let (ka_csr, _) = p256_csr();
    let r = client_for(&app.root_pem(), Some(&gateway.enrolled.identity_pem()))
        .post(app.url("/v1/renew"))
        .json(&json!({"csr_pem": csr, "key_agreement_csr_pem": ka_csr,
                      "advertise": ["https://gw2.local:8444"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let renewed: Value = r.json().await.unwrap();
    let renewed = Enrolled {
        body: renewed,
        key_pem: key.serialize_pem(),
    };
    let record: Value = peer(&app, &sensor.enrolled, &gw_id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["certificate_pem"], renewed.body["certificate_pem"]);
    assert_eq!(
        record["key_agreement_certificate_pem"],
        renewed.body["key_agreement_certificate_pem"]
    );
    assert_ne!(
        record["key_agreement_certificate_pem"],
        g["key_agreement_certificate_pem"]
    );
    assert_eq!(record["endpoints"], json!(["https://gw2.local:8444"]));

    // Revoking the gateway revokes both of its current certificates (and the earlier pair):
    // all four serials are on the CRL, and the directory refuses it.
    let r = app
        .post(
            &format!("/v1/devices/{gw_id}/revoke"),
            Some(&app.admin),
            &json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    expect_problem(
        peer(&app, &sensor.enrolled, &gw_id).await,
        StatusCode::GONE,
        ProblemCode::PeerRevoked,
    )
    .await;
    let crl = app.client.get(app.url("/v1/crl")).send().await.unwrap();
    let crl_der = crl.bytes().await.unwrap();
    let (_, crl) = CertificateRevocationList::from_der(&crl_der).unwrap();
    let listed: Vec<Vec<u8>> = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    for pem_text in [
        &g["certificate_pem"],
        &g["key_agreement_certificate_pem"],
        &renewed.body["certificate_pem"],
        &renewed.body["key_agreement_certificate_pem"],
    ] {
        let der = der_of(pem_text.as_str().unwrap());
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(
            listed.iter().any(|s| s.as_slice() == cert.raw_serial()),
            "serial {} is not on the CRL",
            cert.raw_serial_as_string()
        );
    }
}

#[tokio::test]
async fn the_peer_directory_serves_current_certificates_sqlite() {
    check_directory(Db::Sqlite).await;
}

#[tokio::test]
async fn the_peer_directory_serves_current_certificates_postgres() {
    check_directory(Db::Postgres).await;
}

/// A key-agreement certificate is for encryption only: presented as a TLS client
/// certificate (its key can sign a handshake), it identifies no caller.
#[tokio::test]
async fn a_key_agreement_certificate_authenticates_nothing() {
    let app = spawn_app(Db::Sqlite).await;
    let device = enroll_for_messages(&app, "sensors", &[]).await;
    let body = &device.enrolled.body;
    let identity = format!(
        "{}{}{}",
        body["key_agreement_certificate_pem"].as_str().unwrap(),
        body["ca_chain_pem"].as_str().unwrap(),
        device.ka_key_pem
    );
    let client = client_for(&app.root_pem(), Some(identity.as_bytes()));
    let r = client
        .get(app.url(&format!("/v1/peers/{}", device.enrolled.device_id())))
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["code"], ProblemCode::DeviceUnknown.as_str());
    let (csr, _) = rcgen_csr();
    let r = client
        .post(app.url("/v1/renew"))
        .json(&json!({"csr_pem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
