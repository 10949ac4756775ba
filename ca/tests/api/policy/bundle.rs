//! The signed policy bundle.

use super::*;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::authz::signed::{self, BundleError};
use vouch_ca::ids::TrustDomain;

#[tokio::test]
async fn the_bundle_is_signed_and_verifies_against_the_trust_bundle_only() {
    let (app, _repo) = spawn_app_with_example_copy(Db::Sqlite).await;
    let sensor = app.enroll("sensors").await;
    let r = app.get_as(&sensor, "/v1/policy/bundle").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/jose");
    let jws = r.text().await.unwrap();
    let r = app.get("/v1/policy/bundle", None).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);

    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let root = pem::parse(app.root_pem()).unwrap().contents().to_vec();
    use vouch_ca::clock::Clock;
    let now = app.clock.unix();
    let claims = signed::verify(&jws, &root, &td, now).unwrap();
    let s = status(&app).await;
    assert_eq!(
        claims.version,
        s["active"]["version"]["id"].as_str().unwrap()
    );
    // What an agent does next: load the files it received, offline.
    let bundle = vouch_policy::bundle::load_files(claims.files.clone()).unwrap();
    assert_eq!(bundle.policies.policies().count(), 4);
    assert_eq!(bundle.content_hash, claims.content_hash);

    // A changed payload, another CA's root, another trust domain, or later than the
    // signer's lifetime: refused.
    let parts: Vec<&str> = jws.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["files"]["policies/quarantine.cedar"] = json!("");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    assert!(matches!(
        signed::verify(&forged, &root, &td, now),
        Err(BundleError::BadSignature)
    ));
    let other = spawn_app(Db::Sqlite).await;
    let other_root = pem::parse(other.root_pem()).unwrap().contents().to_vec();
    assert!(matches!(
        signed::verify(&jws, &other_root, &td, now),
        Err(BundleError::UntrustedSigner(_))
    ));
    let other_td = TrustDomain::parse("other.example").unwrap();
    assert!(matches!(
        signed::verify(&jws, &root, &other_td, now),
        Err(BundleError::UntrustedSigner(_))
    ));
    assert!(matches!(
        signed::verify(&jws, &root, &td, now + signed::SIGNER_LIFETIME_SECS + 3600),
        Err(BundleError::UntrustedSigner(_))
    ));
    for junk in ["", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", &"x".repeat(100)] {
        assert!(signed::verify(junk, &root, &td, now).is_err(), "{junk}");
    }
    // A device certificate cannot sign bundles: it lacks the code-signing usage.
    let header = json!({"alg": "ES256", "x5c": [
        base64::engine::general_purpose::STANDARD.encode(
            pem::parse(sensor.body["certificate_pem"].as_str().unwrap()).unwrap().contents())
    ]});
    let impostor = format!(
        "{}.{}.{}",
        b64.encode(serde_json::to_vec(&header).unwrap()),
        parts[1],
        parts[2]
    );
    assert!(matches!(
        signed::verify(&impostor, &root, &td, now),
        Err(BundleError::UntrustedSigner(_))
    ));
}

#[tokio::test]
async fn the_bundle_has_its_version_as_etag_and_a_long_poll_wakes_on_a_reload() {
    let (app, repo) = spawn_app_with_example_copy(Db::Sqlite).await;
    let sensor = app.enroll("sensors").await;
    let device = app.device_client(&sensor);
    let version = active_version(&app).await;
    let r = app.get_as(&sensor, "/v1/policy/bundle").await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{version}\""));

    // The caller's version is the active one: 304, by header or by query.
    let r = device
        .get(app.url("/v1/policy/bundle"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = app
        .get_as(&sensor, &format!("/v1/policy/bundle?after={version}"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = app.get_as(&sensor, "/v1/policy/bundle?after=older").await;
    assert_eq!(r.status(), StatusCode::OK);
    for bad in [
        "wait=61x",
        "after=a&nope=1",
        &format!("after={}", "v".repeat(129)),
    ] {
        let r = app
            .get_as(&sensor, &format!("/v1/policy/bundle?{bad}"))
            .await;
        assert_eq!(problem(r).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }

    // A long-poll on the active version answers as soon as another set is swapped in (well
    // before its 30 s wait), with the new version.
    let url = app.url(&format!("/v1/policy/bundle?after={version}&wait=30"));
    let waiting = tokio::spawn(async move { device.get(url).send().await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll answered before a change"
    );
    std::fs::write(repo.path().join("policies/extra.cedar"), SENSOR_TO_CLOUD).unwrap();
    assert_eq!(app.reload_policies().await.status(), StatusCode::OK);
    let r = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("the long-poll did not wake on the reload")
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let new_version = active_version(&app).await;
    assert_ne!(new_version, version);
    assert_eq!(r.headers()["etag"], format!("\"{new_version}\"").as_str());

    // The trust bundle: its hash as ETag, 304 when it matches.
    let r = app.get("/v1/trust-bundle", None).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let pem = r.text().await.unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    assert_eq!(etag, format!("\"{}\"", hex::encode(digest)));
    let r = app
        .client
        .get(app.url("/v1/trust-bundle"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}
