//! Decisions uploaded by sidecars (`POST /v1/policy/decisions`): recorded once however often
//! a batch is retried, with where they were made; only a device's own decisions, checked
//! whole before anything is written; on both backends.

use super::*;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::clock::Clock as _;
use vouch_proto::ProblemCode;

fn decision(n: u32, side: &str, from: &Enrolled, to: &Enrolled, allowed: bool) -> Value {
    json!({
        "id": format!("{n:032x}"), "at": 1_700_000_000 + i64::from(n), "side": side,
        "from": from.device_id(), "to": to.device_id(),
        "context": {"data_type": "telemetry", "protocol": "mqtt", "tls": false, "mtls": false, "size": 64},
        "allowed": allowed,
        "policies": if allowed { json!(["sensor-to-gateway"]) } else { json!([]) },
        "policy_version": "sha256:abc",
    })
}

async fn upload(
    app: &TestApp,
    device: &reqwest::Client,
    decisions: Vec<Value>,
) -> reqwest::Response {
    device
        .post(app.url("/v1/policy/decisions"))
        .json(&json!({ "decisions": decisions }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_upload_is_recorded_once_with_where_each_decision_was_made() {
    for db in [Db::Sqlite, Db::Postgres] {
        let (app, _repo) = spawn_app_with_example_copy(db).await;
        let sensor = app.enroll("sensors").await;
        let gateway = app.enroll("edge").await;
        let batch: Vec<Value> = (0..300)
            .map(|n| decision(n, "sender", &sensor, &gateway, n % 3 != 0))
            .collect();
        let device = app.device_client(&sensor);
        let r = upload(&app, &device, batch.clone()).await;
        assert_eq!(r.status(), StatusCode::OK, "{db:?}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            answer,
            json!({"recorded": 300, "already_recorded": 0}),
            "{db:?}"
        );
        // The same batch again (an answer lost, or the agent killed before it saw it), and
        // one that overlaps it: only the new decisions are logged.
        let r = upload(&app, &device, batch.clone()).await;
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            answer,
            json!({"recorded": 0, "already_recorded": 300}),
            "{db:?}"
        );
        let overlap: Vec<Value> = (290..310)
            .map(|n| decision(n, "sender", &sensor, &gateway, true))
            .collect();
        let answer: Value = upload(&app, &device, overlap).await.json().await.unwrap();
        assert_eq!(
            answer,
            json!({"recorded": 10, "already_recorded": 10}),
            "{db:?}"
        );
        assert_eq!(decision_count(&app).await, 310, "{db:?}");

        // The receiver's end of the same messages has its own ids and is its own record.
        let receiver = app.device_client(&gateway);
        let received = vec![decision(0, "receiver", &sensor, &gateway, true)];
        let answer: Value = upload(&app, &receiver, received)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(answer["recorded"], 1, "{db:?}");

        // The log shows where each was made and by which device.
        let page = decision_log_page(&app, &app.admin, "limit=2").await;
        let newest = &page["decisions"][0];
        assert_eq!(newest["origin"], "receiver", "{db:?}");
        assert_eq!(newest["caller"], format!("device:{}", gateway.device_id()));
        assert_eq!(newest["action"], "send");
        assert_eq!(newest["context"]["data_type"], "telemetry");
        let before = &page["decisions"][1];
        assert_eq!(before["origin"], "sender");
        assert_eq!(before["caller"], format!("device:{}", sensor.device_id()));
        assert_eq!(before["decision"], "allow");
        // The server's own decisions say so.
        authorize(&app, &telemetry(&sensor, &gateway, "mqtt", false)).await;
        let page = decision_log_page(&app, &app.admin, "limit=1").await;
        assert_eq!(page["decisions"][0]["origin"], "server");
    }
}

#[tokio::test]
async fn only_a_devices_own_decisions_are_taken_and_a_bad_one_spoils_the_batch() {
    let (app, _repo) = spawn_app_with_example_copy(Db::Sqlite).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let device = app.device_client(&sensor);
    let good = decision(1, "sender", &sensor, &gateway, true);

    let mut cases: Vec<(Value, StatusCode, ProblemCode)> = Vec::new();
    // Decisions made at another device's end: as the receiver of its own message, or as
    // the sender of the gateway's.
    for bad in [
        decision(2, "receiver", &sensor, &gateway, true),
        decision(3, "sender", &gateway, &sensor, true),
    ] {
        cases.push((bad, StatusCode::FORBIDDEN, ProblemCode::ForbiddenRequest));
    }
    let mut edits: Vec<(&str, Value)> = vec![
        ("id", json!("not-hex")),
        ("id", json!("00000000000000000000000000000ABC")),
        ("at", json!(i64::MAX)),
        ("at", json!(app.clock.unix() + 2 * 86_400)),
        ("at", json!(-1)),
        ("to", json!("x/y")),
        ("policies", json!(vec!["p"; 65])),
        ("policy_version", json!("v".repeat(129))),
    ];
    edits.push(("side", json!("elsewhere")));
    edits.push(("unknown_field", json!(1)));
    for (key, value) in edits {
        let mut bad = good.clone();
        bad[key] = value;
        let code = if key == "side" || key == "unknown_field" {
            ProblemCode::InvalidBody
        } else {
            ProblemCode::InvalidRequest
        };
        cases.push((bad, StatusCode::UNPROCESSABLE_ENTITY, code));
    }
    for (bad, status, code) in cases {
        let r = upload(&app, &device, vec![good.clone(), bad.clone()]).await;
        assert_problem(r, status, code).await;
    }
    // Empty, too many, and not over mutual TLS.
    let r = upload(&app, &device, Vec::new()).await;
    assert_problem(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::InvalidRequest,
    )
    .await;
    let many: Vec<Value> = (0..501)
        .map(|n| decision(n, "sender", &sensor, &gateway, true))
        .collect();
    let r = upload(&app, &device, many).await;
    assert_problem(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::InvalidRequest,
    )
    .await;
    let r = app
        .post(
            "/v1/policy/decisions",
            Some(&app.admin),
            &json!({ "decisions": [good] }),
        )
        .await;
    assert_problem(
        r,
        StatusCode::UNAUTHORIZED,
        ProblemCode::ClientCertificateRequired,
    )
    .await;
    // Nothing of any refused batch was written.
    assert_eq!(decision_count(&app).await, 0);
}

#[tokio::test]
async fn each_device_gets_its_rate_of_uploads_and_a_fast_clock_is_not_refused() {
    let app = spawn_app_full(
        Db::Sqlite,
        vouch_ca::api::Settings {
            decisions_per_second: 2,
            decision_burst: 3,
            ..settings()
        },
        policy_config(&example_policy_dir()),
    )
    .await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let device = app.device_client(&sensor);
    // Ten minutes ahead (a device whose clock runs fast): taken.
    let ahead = app.clock.unix() + 600;
    for n in 0..3 {
        let mut d = decision(n, "sender", &sensor, &gateway, true);
        d["at"] = json!(ahead);
        let r = upload(&app, &device, vec![d]).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = upload(
        &app,
        &device,
        vec![decision(9, "sender", &sensor, &gateway, true)],
    )
    .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, ProblemCode::RateLimited).await;
    // Another device has its own allowance.
    let other = app.device_client(&gateway);
    let r = upload(
        &app,
        &other,
        vec![decision(1, "receiver", &sensor, &gateway, true)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(decision_count(&app).await, 4);
}
