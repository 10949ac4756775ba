//! Acceptance 1: enrollment by CSR and by server key generation; the certificate passes
//! `openssl verify` and webpki client-auth verification and carries the SPIFFE ID and zone.

use crate::support::*;
use reqwest::StatusCode;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use x509_parser::extensions::GeneralName;

fn check_certificate(app: &TestApp, body: &Value) {
    let dir = app.dir.path();
    let cert_pem = body["certificate_pem"].as_str().unwrap();
    write_device_certificate(dir, body);
    write(dir, "root.pem", &app.root_pem());
    let out = openssl_verify_device(dir, &[]);
    assert!(out.contains("device.pem: OK"), "{out}");
    let out = openssl_verify_device(dir, &["-purpose", "sslclient"]);
    assert!(out.contains("OK"), "{out}");

    // SPIFFE ID: exactly one URI SAN; zone in the subject OU.
    let der = pem::parse(cert_pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let uris: Vec<_> = san
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let device_id = body["device_id"].as_str().unwrap();
    assert_eq!(
        uris,
        vec![format!("spiffe://{TRUST_DOMAIN}/device/{device_id}").as_str()]
    );
    assert_eq!(body["spiffe_id"].as_str().unwrap(), uris[0]);
    let ou: Vec<_> = cert
        .subject()
        .iter_organizational_unit()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ou, vec!["factory-1".to_owned()]);
    assert!(!cert.is_ca());
    let serial = vouch_ca::ids::Serial::from_der_bytes(cert.raw_serial()).expect("128-bit serial");
    assert_eq!(serial.to_hex(), body["serial"].as_str().unwrap());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 24 * 3600 + 300, "24 h plus 5 min backdating");

    // webpki, for client authentication.
    let root_der = pem::parse(app.root_pem()).unwrap().into_contents();
    let root_der = CertificateDer::from(root_der);
    let anchor = webpki::anchor_from_trusted_cert(&root_der).unwrap();
    let chain = pem::parse_many(body["ca_chain_pem"].as_str().unwrap()).unwrap();
    let issuing = CertificateDer::from(chain[0].contents().to_vec());
    let leaf_der = CertificateDer::from(der.clone());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    leaf.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &[issuing],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("webpki accepts the chain for client auth");
}

#[tokio::test]
async fn csr_enrollment_passes_openssl_and_webpki() {
    let app = spawn_app(Db::Sqlite).await;
    let token = app.bootstrap_token("factory-1").await;
    let (csr, _key) = openssl_csr(app.dir.path(), "ec", &["ec_paramgen_curve:P-256"]);
    let r = app.enroll_with_csr(&token, &csr).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("private_key_pem").is_none());
    assert_eq!(body["zone"], "factory-1");
    check_certificate(&app, &body);

    // Names asked for in the CSR are ignored.
    let cert = body["certificate_pem"].as_str().unwrap();
    let der = pem::parse(cert).unwrap().into_contents();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!format!("{}", parsed.subject()).contains("ignored"));

    // The registry has it, with the token's labels and class.
    let device = app.device_json(body["device_id"].as_str().unwrap()).await;
    assert_eq!(device["status"], "active");
    assert_eq!(device["labels"]["line"], "a");
    assert_eq!(device["device_class"], "sensor");
    assert_eq!(device["current_serial"], body["serial"]);
}

#[tokio::test]
async fn rsa_and_ed25519_csrs_are_accepted() {
    let app = spawn_app(Db::Sqlite).await;
    for (newkey, opts) in [("rsa:2048", vec![]), ("ed25519", vec![])] {
        let token = app.bootstrap_token("factory-1").await;
        let (csr, _) = openssl_csr(app.dir.path(), newkey, &opts);
        let r = app.enroll_with_csr(&token, &csr).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{newkey}");
    }
}

#[tokio::test]
async fn server_keygen_returns_the_key_once_and_never_stores_it() {
    let app = spawn_app(Db::Sqlite).await;
    let body = app.enroll_with_server_key("factory-1").await;
    check_certificate(&app, &body);

    // The returned key is the certificate's key.
    let key_pem = body["private_key_pem"].as_str().unwrap();
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let der = pem::parse(body["certificate_pem"].as_str().unwrap())
        .unwrap()
        .into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());

    // Neither the registry file nor its WAL holds the key, in DER or in PEM form.
    app.server.state.registry.close().await;
    // The private scalar: the 32 bytes after the OCTET STRING header `04 20` in PKCS#8.
    let key_der = key.serialize_der();
    let at = key_der.windows(2).position(|w| w == [0x04, 0x20]).unwrap() + 2;
    let secret = &key_der[at..at + 32];
    let pem_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for entry in std::fs::read_dir(app.data_dir().path()).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("vouch.db")
        {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{path:?}"
        );
        assert!(
            !bytes.windows(32).any(|w| w == &pem_body.as_bytes()[..32]),
            "{path:?}"
        );
    }
}
