//! Decisions: registry facts, versions, who may ask, hostile requests.

use super::*;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::tokens::Role;
use vouch_proto::ProblemCode;

#[tokio::test]
async fn decisions_see_the_registry_and_name_the_version() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let cloud = app.enroll("cloud").await;
    let version = active_version(&app).await;
    assert!(version.starts_with("sha256:"), "{version}");

    let to_gateway = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    let d = authorize(&app, &to_gateway).await;
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["policies"], json!(["sensor-to-gateway"]));
    assert_eq!(d["policy_version"], version.as_str());

    let to_cloud = telemetry(
        sensor.device_id(),
        json!({"device": cloud.device_id()}),
        "mqtt",
        true,
    );
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policies"], json!([]));

    // The gateway rule carries its rate limit for the enforcer.
    let regional = app.enroll("regional").await;
    let metrics = json!({
        "principal": gateway.device_id(), "action": "send",
        "resource": {"device": regional.device_id()},
        "context": {"data_type": "aggregated_metrics", "protocol": "https", "tls": true, "mtls": true, "size": 10}
    });
    let d = authorize(&app, &metrics).await;
    assert_eq!(d["decision"], "allow");
    assert_eq!(
        d["annotations"],
        json!([{"policy": "gateway-to-regional", "key": "rate_limit", "value": "1000/min"}])
    );

    // Revocation reaches decisions at once: the quarantine forbid denies everything.
    let r = app
        .post(
            &format!("/v1/devices/{}/revoke", sensor.device_id()),
            Some(&app.admin),
            &json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let d = authorize(&app, &to_gateway).await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policies"], json!(["quarantine"]));

    // Every answered decision is in the log, newest first, with the caller and version.
    assert_eq!(decision_count(&app).await, 4);
    let r = app
        .get(
            &format!(
                "/v1/policy/decisions?principal={}&limit=1",
                sensor.device_id()
            ),
            Some(&app.token_for(Role::Auditor)),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    let last = &page["decisions"][0];
    assert_eq!(last["decision"], "deny");
    assert_eq!(last["policies"], json!(["quarantine"]));
    assert_eq!(last["caller"], "operator:test-admin");
    assert_eq!(last["policy_version"], version.as_str());
    assert_eq!(last["context"]["protocol"], "mqtt");
    let older = page["next_cursor"].as_i64().unwrap();
    let r = app
        .get(
            &format!(
                "/v1/policy/decisions?principal={}&cursor={older}",
                sensor.device_id()
            ),
            Some(&app.admin),
        )
        .await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["decisions"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_null());
}

#[tokio::test]
async fn devices_ask_only_about_themselves_and_nobody_else_asks_unauthenticated() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let other = app.enroll("sensors").await;
    let device = client_for(&app.root_pem(), Some(&sensor.identity_pem()));

    // As principal (egress check) and as resource (ingress check on the receiving side).
    let egress = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    let r = device_authorize(&app, &device, &egress).await;
    assert_eq!(r.status(), StatusCode::OK);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["decision"], "allow");
    let ingress = telemetry(
        other.device_id(),
        json!({"device": sensor.device_id()}),
        "mqtt",
        false,
    );
    let r = device_authorize(&app, &device, &ingress).await;
    assert_eq!(r.status(), StatusCode::OK);

    // About two other devices: refused, and not logged.
    let before = decision_count(&app).await;
    let foreign = telemetry(
        other.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    let r = device_authorize(&app, &device, &foreign).await;
    let (status, p) = problem(r).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(p["code"], ProblemCode::ForbiddenRequest.as_str());

    // No credentials, or a bootstrap token as bearer: refused.
    let r = app.post("/v1/authorize", None, &egress).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let token = app.bootstrap_token("sensors").await;
    let r = app.post("/v1/authorize", Some(&token), &egress).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    // The decision log and the status are for operators only.
    let r = device
        .get(app.url("/v1/policy/decisions"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let r = device
        .get(app.url("/v1/policy/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(decision_count(&app).await, before);
}

#[tokio::test]
async fn hostile_decision_requests_get_problems_and_log_nothing() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let good = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );

    let mut unknown_field = good.clone();
    unknown_field["extra"] = json!(1);
    let mut unknown_context = good.clone();
    unknown_context["context"]["firmware"] = json!("1.0");
    let mut bad_target = good.clone();
    bad_target["resource"] = json!({"robot": "x"});
    let mut unknown_action = good.clone();
    unknown_action["action"] = json!("teleport");
    let mut unknown_device = good.clone();
    unknown_device["principal"] = json!("0123456789abcdef0123456789abcdef");
    let mut long_id = good.clone();
    long_id["principal"] = json!("x".repeat(10_000));
    let mut wrong_type = good.clone();
    wrong_type["context"]["size"] = json!("large");

    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "unknown field",
            unknown_field,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody.as_str(),
        ),
        (
            "unknown context field",
            unknown_context,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody.as_str(),
        ),
        (
            "bad resource",
            bad_target,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody.as_str(),
        ),
        (
            "wrong type",
            wrong_type,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody.as_str(),
        ),
        (
            "action not in the schema",
            unknown_action,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest.as_str(),
        ),
        (
            "unknown device",
            unknown_device,
            StatusCode::NOT_FOUND,
            ProblemCode::DeviceNotFound.as_str(),
        ),
        (
            "oversized id",
            long_id,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest.as_str(),
        ),
    ];
    for (name, body, want_status, want_code) in cases {
        let r = app.post("/v1/authorize", Some(&app.admin), &body).await;
        let (status, p) = problem(r).await;
        assert_eq!(status, want_status, "{name}: {p}");
        assert_eq!(p["code"], want_code, "{name}: {p}");
    }
    let r = app
        .client
        .post(app.url("/v1/authorize"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{\"principal\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(r).await.1["code"],
        ProblemCode::MalformedJson.as_str()
    );
    let r = app
        .client
        .post(app.url("/v1/authorize"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let r = app
        .get("/v1/policy/decisions?limit=0", Some(&app.admin))
        .await;
    assert_eq!(
        problem(r).await.1["code"],
        ProblemCode::InvalidQuery.as_str()
    );
    assert_eq!(decision_count(&app).await, 0);
}

#[tokio::test]
async fn without_a_policy_directory_everything_is_denied() {
    let app = spawn_app(Db::Sqlite).await;
    let a = app.enroll("sensors").await;
    let b = app.enroll("edge").await;
    let d = authorize(
        &app,
        &telemetry(
            a.device_id(),
            json!({"device": b.device_id()}),
            "mqtt",
            true,
        ),
    )
    .await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policy_version"], "none");
    let r = app.get("/v1/policy/bundle", Some(&app.admin)).await;
    assert_eq!(problem(r).await.1["code"], ProblemCode::NoPolicy.as_str());
}
