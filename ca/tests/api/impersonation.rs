//! A caller is identified by issuing CA, serial and SPIFFE ID, all checked, and only while
//! its certificate is valid; a policy bundle is trusted only from a code-signing certificate.
//! Each test performs the attack and fails if it succeeds.

use crate::support::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use reqwest::StatusCode;
use serde_json::json;
use vouch_ca::authz::signed::{self, BundleError};
use vouch_ca::datadir::DataFile;
use vouch_ca::ids::TrustDomain;
use vouch_ca::pki::authority::{Authority, CaFiles};
use vouch_proto::ProblemCode;

/// The server's CA as rcgen issuers, read from its data directory (whose root key is online
/// in tests, as after `vouch ca init`).
fn authority(app: &TestApp) -> (Authority, rcgen::Certificate, KeyPair) {
    let data = app.data_dir();
    let read = |f| std::fs::read_to_string(data.file(f)).unwrap();
    let root_key = KeyPair::from_pem(&read(DataFile::RootKey)).unwrap();
    let root = CertificateParams::from_ca_cert_pem(&read(DataFile::RootCert))
        .unwrap()
        .self_signed(&root_key)
        .unwrap();
    let ca = Authority::load(&CaFiles {
        root_cert_pem: read(DataFile::RootCert),
        root_key_pem: None,
        issuing_cert_pem: read(DataFile::IssuingCert),
        issuing_key_pem: read(DataFile::IssuingKey),
    })
    .unwrap();
    (ca, root, root_key)
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().contents().to_vec()
}

/// The serial of an enrolled device's certificate, as DER integer bytes.
fn serial_of(device: &Enrolled) -> Vec<u8> {
    let der = der(device.body["certificate_pem"].as_str().unwrap());
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial().to_vec()
}

/// A client identity (PEM: certificate, `chain`, key) for a client-auth certificate with
/// `serial` and the one URI SAN `spiffe_id`, signed by `issuer`.
fn forged_identity(
    serial: &[u8],
    spiffe_id: &str,
    (issuer, issuer_key): (&rcgen::Certificate, &KeyPair),
    chain: &str,
) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer, issuer_key).unwrap();
    format!("{}{chain}{}", cert.pem(), key.serialize_pem())
}

/// `identity` asks to renew: the response, or the TLS error if the handshake refused it.
async fn renew_as(app: &TestApp, identity: &str) -> reqwest::Result<reqwest::Response> {
    client_for(&app.root_pem(), Some(identity.as_bytes()))
        .post(app.url("/v1/renew"))
        .json(&json!({"csr_pem": rcgen_csr().0}))
        .send()
        .await
}

/// With a root shared by another CA (a corporate root over `vouch ca import`), a sibling
/// intermediate mints a certificate with the victim's serial and SPIFFE ID. It must not renew
/// as the victim, nor ask anything as the victim.
#[tokio::test]
async fn a_sibling_intermediate_cannot_mint_a_victims_certificate() {
    let app = spawn_app(Db::Sqlite).await;
    let victim = app.enroll("sensors").await;
    let (_, root, root_key) = authority(&app);

    let sibling_key = KeyPair::generate().unwrap();
    let mut sibling = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Another team's issuing CA");
    sibling.distinguished_name = dn;
    sibling.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    sibling.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let sibling = sibling.signed_by(&sibling_key, &root, &root_key).unwrap();

    let identity = forged_identity(
        &serial_of(&victim),
        victim.body["spiffe_id"].as_str().unwrap(),
        (&sibling, &sibling_key),
        &sibling.pem(),
    );

    let before = app.counts().await;
    match renew_as(&app, &identity).await {
        // The handshake refuses the chain: the issuing CA is the only anchor for clients.
        Err(_) => {}
        Ok(r) => assert!(
            r.status().is_client_error(),
            "a forged certificate renewed as the victim: {}",
            r.status()
        ),
    }
    let asked = client_for(&app.root_pem(), Some(identity.as_bytes()))
        .get(app.url("/v1/policy/bundle"))
        .send()
        .await;
    assert!(asked.is_err() || asked.unwrap().status().is_client_error());
    assert_eq!(app.counts().await.certificates, before.certificates);
    // The victim's own certificate still works.
    assert_eq!(app.renew(&victim).await.status(), StatusCode::CREATED);
}

/// A certificate of our issuing CA whose SPIFFE ID names another device than the registry's
/// record of its serial is refused (the three parts of an identity must agree). Minted here
/// with the CA's own key: what a bug or a stolen signing request could produce.
#[tokio::test]
async fn a_certificate_whose_spiffe_id_disagrees_with_its_serial_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let victim = app.enroll("sensors").await;
    let other = app.enroll("sensors").await;
    let (ca, _, _) = authority(&app);
    let identity = forged_identity(
        &serial_of(&victim),
        other.body["spiffe_id"].as_str().unwrap(),
        ca.issuer(),
        "",
    );
    assert_problem(
        renew_as(&app, &identity).await.unwrap(),
        StatusCode::FORBIDDEN,
        ProblemCode::DeviceUnknown,
    )
    .await;

    // A certificate whose SPIFFE ID is of another trust domain is not a device at all.
    let elsewhere = format!("spiffe://elsewhere.example/device/{}", victim.device_id());
    let identity = forged_identity(&serial_of(&victim), &elsewhere, ca.issuer(), "");
    let r = renew_as(&app, &identity).await.unwrap();
    let (status, _) = problem(r).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The handshake checks expiry once; a connection kept alive past the certificate's
/// `notAfter` must not renew (or do anything else) with it.
#[tokio::test]
async fn an_expired_certificate_on_a_kept_alive_connection_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let device = app.enroll("sensors").await;
    let client = app.device_client(&device);
    let bundle = client
        .get(app.url("/v1/trust-bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);

    // Past the 24-hour lifetime and the clock skew, on the same client (and connection).
    app.clock.advance(25 * 3600);
    assert_problem(
        app.renew_over(&client).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::ClientCertificateExpired,
    )
    .await;
}

/// A certificate of our own issuing CA that names the policy signer but carries no
/// extendedKeyUsage (so not codeSigning) cannot sign a bundle an agent accepts.
#[tokio::test]
async fn a_bundle_signed_without_the_code_signing_usage_is_refused() {
    let app = spawn_app_with_example_policies(Db::Sqlite).await;
    let r = app.get("/v1/policy/bundle", Some(&app.admin)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let jws = r.text().await.unwrap();
    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let root = der(std::str::from_utf8(&app.root_pem()).unwrap());
    use vouch_ca::clock::Clock;
    let now = app.clock.unix();
    let claims = signed::verify(&jws, &root, &td, now).unwrap();

    let (ca, _, _) = authority(&app);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{TRUST_DOMAIN}/vouch/policy-signer")
            .try_into()
            .unwrap(),
    )];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let (issuer, issuer_key) = ca.issuer();
    let cert = params.signed_by(&key, issuer, issuer_key).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![b64.encode(cert.der()), b64.encode(ca.issuing_der())]);
    let forged = jsonwebtoken::encode(
        &header,
        &serde_json::to_value(&claims).unwrap(),
        &jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap();
    let refused = signed::verify(&forged, &root, &td, now);
    assert!(
        matches!(refused, Err(BundleError::UntrustedSigner(ref why)) if why.contains("code signing")),
        "{refused:?}"
    );
}

/// After a TPM re-enrollment the superseded certificate is on the next CRL at once and is
/// refused on every device endpoint, though its device is in good standing.
#[tokio::test]
async fn a_superseded_certificate_is_on_the_crl_and_refused_everywhere() {
    use crate::tpm::{enrolled_tpm, sensor_token, tpm_app, tpm_enroll};
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (booted, old) = enrolled_tpm(&app).await;
    // A CRL is current before the re-enrollment (so that one signed on demand would not do),
    // and the server has the old certificate's identity in memory (it attested with it).
    assert_eq!(app.get("/v1/crl", None).await.status(), StatusCode::OK);
    let r = app
        .device_client(&old)
        .post(app.url("/v1/attest/challenge"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = sensor_token(&app, Some(old.device_id())).await;
    let new = tpm_enroll(&app, &booted.tpm, &token).await.unwrap();

    let crl = app.get("/v1/crl", None).await.bytes().await.unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&crl).unwrap();
    // (A DER serial with its high bit set has a leading zero octet; read it as a Serial.)
    let listed: Vec<String> = crl
        .iter_revoked_certificates()
        .filter_map(|r| vouch_ca::ids::Serial::from_der_bytes(r.raw_serial()))
        .map(|s| s.to_hex())
        .collect();
    assert!(listed.contains(&old.serial().to_owned()), "{listed:?}");
    assert!(!listed.contains(&new.serial().to_owned()));

    // A new connection with the old certificate.
    let stale_client = app.device_client(&old);
    let asks = [
        stale_client.get(app.url("/v1/policy/bundle")),
        stale_client.post(app.url("/v1/attest/challenge")),
        stale_client.post(app.url("/v1/authorize")).json(&json!({
            "principal": old.device_id(), "action": "send",
            "resource": {"zone": "edge"},
            "context": {"data_type": "telemetry", "protocol": "mqtt", "tls": true, "mtls": true, "size": 1}})),
        stale_client
            .post(app.url("/v1/renew"))
            .json(&json!({"csr_pem": rcgen_csr().0})),
    ];
    for ask in asks {
        let r = ask.send().await.unwrap();
        assert_problem(r, StatusCode::FORBIDDEN, ProblemCode::CertificateRevoked).await;
    }
    // The current certificate works.
    let r = app.get_as(&new, "/v1/policy/bundle").await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// A certificate superseded on another replica (written straight into the shared registry
/// here) is refused a challenge once this replica's cached identity has aged out.
#[tokio::test]
async fn a_certificate_revoked_elsewhere_is_refused_once_the_cached_identity_ages_out() {
    use crate::tpm::{enrolled_tpm, tpm_app};
    use sqlx::Connection;
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (_booted, device) = enrolled_tpm(&app).await;
    let client = app.device_client(&device);
    let challenge = || client.post(app.url("/v1/attest/challenge")).send();
    assert_eq!(challenge().await.unwrap().status(), StatusCode::CREATED);

    use vouch_ca::clock::Clock;
    let mut conn = sqlx::AnyConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE certificates SET revoked_at = $1 WHERE serial = $2")
        .bind(app.clock.unix())
        .bind(device.serial())
        .execute(&mut conn)
        .await
        .unwrap();
    app.clock.advance(vouch_ca::api::IDENTITY_TTL_SECS + 1);
    assert_problem(
        challenge().await.unwrap(),
        StatusCode::FORBIDDEN,
        ProblemCode::CertificateRevoked,
    )
    .await;
}
