//! `GET /v1/crl` as a change feed: the CRL number is its `ETag`, a caller that has the current
//! one gets `304`, and a long-poll (`after=N&wait=S`) answers as soon as the next CRL is
//! signed: on the same server, or on another replica of the same PostgreSQL database.

use crate::support::*;
use reqwest::StatusCode;
use std::time::Duration;
use x509_parser::prelude::FromDer;

/// The number an answer's `ETag` names.
fn etag(r: &reqwest::Response) -> i64 {
    r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// Longer than any wake-up takes, far shorter than the long-poll's own wait (60 s): a
/// long-poll that was not woken by the new CRL runs into it.
const WOKEN_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_crl_carries_its_number_and_an_unchanged_crl_is_not_sent_again() {
    let app = spawn_app(Db::Sqlite).await;
    let r = app.get("/v1/crl", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let n = etag(&r);
    assert!(!r.bytes().await.unwrap().is_empty());
    let same = app
        .client
        .get(app.url("/v1/crl"))
        .header("if-none-match", format!("\"{n}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(etag(&same), n);
    assert!(same.bytes().await.unwrap().is_empty());
    // An older number gets the current CRL at once, even when asked to wait.
    let r = app
        .get(&format!("/v1/crl?after={}&wait=60", n - 1), None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(etag(&r), n);
    // Nonsense in the query is a problem, not a wait.
    for query in ["wait=-1", "after=x", "wait=61&after=0&extra=1"] {
        let r = app.get(&format!("/v1/crl?{query}"), None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
    }
}

/// Long-polls `base` for the CRL after `n`; the answer's status and number.
async fn long_poll(client: reqwest::Client, base: String, n: i64) -> (StatusCode, i64) {
    let r = client
        .get(format!("{base}/v1/crl?after={n}&wait=60"))
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, etag(&r))
}

async fn a_revocation_wakes_a_long_poll(app: &TestApp, poll_base: String) {
    let device = app.enroll("lab").await;
    let n = etag(&app.get("/v1/crl", None).await);
    let poll = tokio::spawn(long_poll(app.client.clone(), poll_base, n));
    // The long-poll is waiting: nothing newer exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    assert_eq!(
        app.revoke(device.device_id(), "key compromise")
            .await
            .status(),
        StatusCode::OK
    );
    let (status, number) = tokio::time::timeout(WOKEN_WITHIN, poll)
        .await
        .expect("the long-poll was not woken by the new CRL")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(number > n, "{number} after {n}");
}

#[tokio::test]
async fn a_long_poll_answers_when_a_revocation_signs_the_next_crl() {
    let app = spawn_app(Db::Sqlite).await;
    let base = app.base.clone();
    a_revocation_wakes_a_long_poll(&app, base).await;
}

#[tokio::test]
async fn a_revocation_on_one_replica_wakes_a_long_poll_on_another_postgres() {
    let app = spawn_app(Db::Postgres).await;
    let other = replica_of(&app).await;
    let base = format!("https://127.0.0.1:{}", other.addr.port());
    a_revocation_wakes_a_long_poll(&app, base).await;
}

/// The serials (hex, as the registry writes them) the current CRL lists, with whether each
/// is only on hold; and what `openssl crl -text` makes of it.
async fn listed(app: &TestApp) -> (Vec<(String, bool)>, String) {
    let r = app.get("/v1/crl", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let der = r.bytes().await.unwrap().to_vec();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    let entries = crl
        .iter_revoked_certificates()
        .map(|e| {
            let hold = e
                .reason_code()
                .is_some_and(|(_, code)| code == x509_parser::x509::ReasonCode::CertificateHold);
            (hex::encode(e.raw_serial()), hold)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crl.der"), &der).unwrap();
    let text = openssl(
        dir.path(),
        &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
    );
    (entries, text)
}

fn holds(entries: &[(String, bool)], serial: &str) -> bool {
    entries
        .iter()
        .any(|(s, hold)| s.trim_start_matches("00") == serial.trim_start_matches("00") && *hold)
}

#[tokio::test]
async fn a_quarantined_or_stale_device_is_on_hold_until_released_or_attested() {
    use crate::tpm::{attest, enrolled_tpm, tpm_app};
    use vouch_ca::clock::Clock;
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (booted, device) = enrolled_tpm(&app).await;
    let (entries, _) = listed(&app).await;
    assert!(!holds(&entries, device.serial()), "{entries:?}");

    // A failed attestation: quarantined, and on hold in a new CRL at once.
    let before = etag(&app.get("/v1/crl", None).await);
    booted.tpm.extend(0, &[0x66; 32]);
    assert_eq!(
        attest(&app, &device, &booted).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let r = app.get("/v1/crl", None).await;
    assert!(etag(&r) > before);
    let (entries, text) = listed(&app).await;
    assert!(holds(&entries, device.serial()), "{entries:?}");
    assert!(text.contains("Certificate Hold"), "{text}");

    // Released by an operator: off the list.
    let path = format!("/v1/devices/{}/release", device.device_id());
    let r = app
        .post(
            &path,
            Some(&app.admin),
            &serde_json::json!({"reason": "reflashed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (entries, _) = listed(&app).await;
    assert!(!holds(&entries, device.serial()), "{entries:?}");
    assert!(entries.is_empty(), "{entries:?}");

    // Silent past its attestation period and grace: stale, on hold; a passing attestation
    // (of the boot it had) takes it off again.
    let (booted, silent) = enrolled_tpm(&app).await;
    let period = settings().attestation_period_secs;
    let grace = settings().attestation_grace_secs;
    app.clock.advance(period + grace + period);
    let _ = app.clock.now();
    app.assert_sweep_made_stale("replica-a", 2).await;
    let (entries, _) = listed(&app).await;
    assert!(holds(&entries, silent.serial()), "{entries:?}");
    assert_eq!(
        attest(&app, &silent, &booted).await.status(),
        StatusCode::OK
    );
    let (entries, _) = listed(&app).await;
    assert!(!holds(&entries, silent.serial()), "{entries:?}");
}
