//! Acceptance 5: the auditor cannot write; a device certificate and a bootstrap token cannot
//! call operator endpoints.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;
use vouch_ca::tokens::Role;
use vouch_proto::ProblemCode;

/// The holder of `bearer` asks for a bootstrap token for zone `z`.
async fn ask_for_bootstrap_token(app: &TestApp, bearer: &str) -> reqwest::Response {
    app.post("/v1/bootstrap-tokens", Some(bearer), &json!({"zone": "z"}))
        .await
}

#[tokio::test]
async fn auditor_reads_but_cannot_write() {
    let app = spawn_app(Db::Sqlite).await;
    let device = app.enroll("z").await;
    let auditor = app.token_for(Role::Auditor);
    assert_eq!(
        app.get("/v1/devices", Some(&auditor)).await.status(),
        StatusCode::OK
    );
    let before = app.counts().await;
    assert_problem(
        ask_for_bootstrap_token(&app, &auditor).await,
        StatusCode::FORBIDDEN,
        ProblemCode::ForbiddenRole,
    )
    .await;
    let revoke = format!("/v1/devices/{}/revoke", device.device_id());
    let r = app
        .post(&revoke, Some(&auditor), &json!({"reason": "x"}))
        .await;
    assert_eq!(problem(r).await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.counts().await, before);
    // The operator role may write.
    let operator = app.token_for(Role::Operator);
    let r = ask_for_bootstrap_token(&app, &operator).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn device_certificates_and_bootstrap_tokens_are_not_operators() {
    let app = spawn_app(Db::Sqlite).await;
    let device = app.enroll("z").await;
    let as_device = app.device_client(&device);
    for path in [
        "/v1/devices",
        &format!("/v1/devices/{}", device.device_id()),
    ] {
        let r = as_device.get(app.url(path)).send().await.unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated).await;
    }
    let r = as_device
        .post(app.url("/v1/bootstrap-tokens"))
        .json(&json!({"zone": "z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let bootstrap = app.bootstrap_token("z").await;
    assert_problem(
        app.get("/v1/devices", Some(&bootstrap)).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::TokenInvalid,
    )
    .await;
    let (s, _) = problem(ask_for_bootstrap_token(&app, &bootstrap).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = problem(app.get("/v1/devices", None).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // An expired operator token is refused.
    app.clock.advance(3600 + 61);
    assert_problem(
        app.get("/v1/devices", Some(&app.admin)).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::TokenExpired,
    )
    .await;
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app(Db::Sqlite).await;
    app.enroll("z").await;
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("vouch_enrollments_total{outcome=\"issued\"} 1"),
        "{metrics}"
    );
    let doc: serde_json::Value = app.get("/openapi.json", None).await.json().await.unwrap();
    for path in [
        "/v1/enroll",
        "/v1/renew",
        "/v1/bootstrap-tokens",
        "/v1/devices/{id}/revoke",
        "/v1/crl",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let bundle = app
        .get("/v1/trust-bundle", None)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(bundle.as_ref(), app.root_pem().as_slice());
    // With the database gone, the server is not ready.
    app.server.state.registry.close().await;
    assert_problem(
        app.get("/readyz", None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        ProblemCode::NotReady,
    )
    .await;
}
