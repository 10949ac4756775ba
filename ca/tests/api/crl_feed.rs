//! `GET /v1/crl` as a change feed: the CRL number is its `ETag`, a caller that has the current
//! one gets `304`, and a long-poll (`after=N&wait=S`) answers as soon as the next CRL is
//! signed: on the same server, or on another replica of the same PostgreSQL database.

use crate::support::*;
use reqwest::StatusCode;
use std::time::Duration;

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
