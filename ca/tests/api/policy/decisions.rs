//! Decisions: registry facts, versions, who may ask, hostile requests.

use super::*;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::tokens::Role;
use vouch_proto::ProblemCode;

#[tokio::test]
async fn decisions_see_the_registry_and_name_the_version() {
    let (app, _repo) = spawn_app_with_example_copy(Db::Sqlite).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let cloud = app.enroll("cloud").await;
    let version = active_version(&app).await;
    assert!(version.starts_with("sha256:"), "{version}");

    let to_gateway = telemetry(&sensor, &gateway, "mqtt", false);
    let d = authorize(&app, &to_gateway).await;
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["policies"], json!(["sensor-to-gateway"]));
    assert_eq!(d["policy_version"], version.as_str());

    let to_cloud = telemetry(&sensor, &cloud, "mqtt", true);
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
    let r = app.revoke(sensor.device_id(), "stolen").await;
    assert_eq!(r.status(), StatusCode::OK);
    let d = authorize(&app, &to_gateway).await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policies"], json!(["quarantine"]));

    // Every answered decision is in the log, newest first, with the caller and version.
    assert_eq!(decision_count(&app).await, 4);
    let auditor = app.token_for(Role::Auditor);
    let by_sensor = format!("principal={}", sensor.device_id());
    let page = decision_log_page(&app, &auditor, &format!("{by_sensor}&limit=1")).await;
    let last = &page["decisions"][0];
    assert_eq!(last["decision"], "deny");
    assert_eq!(last["policies"], json!(["quarantine"]));
    assert_eq!(last["caller"], "operator:test-admin");
    assert_eq!(last["policy_version"], version.as_str());
    assert_eq!(last["context"]["protocol"], "mqtt");
    let older = page["next_cursor"].as_i64().unwrap();
    let page = decision_log_page(&app, &app.admin, &format!("{by_sensor}&cursor={older}")).await;
    assert_eq!(page["decisions"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_null());
}

#[tokio::test]
async fn devices_ask_only_about_themselves_and_nobody_else_asks_unauthenticated() {
    let (app, _repo) = spawn_app_with_example_copy(Db::Sqlite).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let other = app.enroll("sensors").await;
    let device = app.device_client(&sensor);

    // As principal (egress check) and as resource (ingress check on the receiving side).
    let egress = telemetry(&sensor, &gateway, "mqtt", false);
    let r = device_authorize(&app, &device, &egress).await;
    assert_eq!(r.status(), StatusCode::OK);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["decision"], "allow");
    let ingress = telemetry(&other, &sensor, "mqtt", false);
    let r = device_authorize(&app, &device, &ingress).await;
    assert_eq!(r.status(), StatusCode::OK);

    // About two other devices: refused, and not logged.
    let before = decision_count(&app).await;
    let foreign = telemetry(&other, &gateway, "mqtt", false);
    let r = device_authorize(&app, &device, &foreign).await;
    assert_problem(r, StatusCode::FORBIDDEN, ProblemCode::ForbiddenRequest).await;

    // No credentials, or a bootstrap token as bearer: refused.
    let r = app.post("/v1/authorize", None, &egress).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let token = app.bootstrap_token("sensors").await;
    let r = app.post("/v1/authorize", Some(&token), &egress).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    // The decision log and the status are for operators only.
    for path in ["/v1/policy/decisions", "/v1/policy/status"] {
        let r = device.get(app.url(path)).send().await.unwrap();
        assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(decision_count(&app).await, before);
}

#[tokio::test]
async fn hostile_decision_requests_get_problems_and_log_nothing() {
    let (app, _repo) = spawn_app_with_example_copy(Db::Sqlite).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let good = telemetry(&sensor, &gateway, "mqtt", false);

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
    // Each string goes into the append-only decision log, so each is bounded (issue 11,
    // finding 5): a protocol has at most 64 characters, a data type 1 to 128.
    let mut long_protocol = good.clone();
    long_protocol["context"]["protocol"] = json!("p".repeat(65));
    let mut huge_protocol = good.clone();
    huge_protocol["context"]["protocol"] = json!("p".repeat(60_000));
    let mut long_data_type = good.clone();
    long_data_type["context"]["data_type"] = json!("d".repeat(129));
    let mut empty_data_type = good.clone();
    empty_data_type["context"]["data_type"] = json!("");

    let cases: Vec<(&str, Value, StatusCode, ProblemCode)> = vec![
        (
            "unknown field",
            unknown_field,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            "unknown context field",
            unknown_context,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            "bad resource",
            bad_target,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            "wrong type",
            wrong_type,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            "action not in the schema",
            unknown_action,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest,
        ),
        (
            "unknown device",
            unknown_device,
            StatusCode::NOT_FOUND,
            ProblemCode::DeviceNotFound,
        ),
        (
            "oversized id",
            long_id,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest,
        ),
        (
            "protocol of 65 characters",
            long_protocol,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest,
        ),
        (
            "protocol of 60,000 characters",
            huge_protocol,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest,
        ),
        (
            "data type of 129 characters",
            long_data_type,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest,
        ),
        (
            "empty data type",
            empty_data_type,
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidRequest,
        ),
    ];
    for (name, body, want_status, want_code) in cases {
        let r = app.post("/v1/authorize", Some(&app.admin), &body).await;
        let (status, p) = problem(r).await;
        assert_eq!(status, want_status, "{name}: {p}");
        assert_eq!(p["code"], want_code.as_str(), "{name}: {p}");
    }
    let post_raw = |body: Vec<u8>| {
        app.client
            .post(app.url("/v1/authorize"))
            .bearer_auth(&app.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post_raw(b"{\"principal\": ".to_vec()).await.unwrap();
    assert_eq!(
        problem(r).await.1["code"],
        ProblemCode::MalformedJson.as_str()
    );
    let r = post_raw(vec![b' '; 100 * 1024]).await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let r = app
        .get("/v1/policy/decisions?limit=0", Some(&app.admin))
        .await;
    assert_eq!(
        problem(r).await.1["code"],
        ProblemCode::InvalidQuery.as_str()
    );
    assert_eq!(decision_count(&app).await, 0);

    // At the bounds, the same request is decided and logged.
    let mut at_bounds = good.clone();
    at_bounds["context"]["protocol"] = json!("p".repeat(64));
    at_bounds["context"]["data_type"] = json!("d".repeat(128));
    authorize(&app, &at_bounds).await;
    assert_eq!(decision_count(&app).await, 1);
}

#[tokio::test]
async fn without_a_policy_directory_everything_is_denied() {
    let app = spawn_app(Db::Sqlite).await;
    let a = app.enroll("sensors").await;
    let b = app.enroll("edge").await;
    let d = authorize(&app, &telemetry(&a, &b, "mqtt", true)).await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policy_version"], "none");
    let r = app.get("/v1/policy/bundle", Some(&app.admin)).await;
    assert_eq!(problem(r).await.1["code"], ProblemCode::NoPolicy.as_str());
}
