//! Attestation results are group-committed: many devices' results go into one
//! transaction. These tests submit at once from many devices (attestation keys in software,
//! `SoftwareAk`, so that batches fill quickly) and check that each device ends up with its
//! own result, and that a nonce answered twice at once is recorded once.

use crate::support::*;
use crate::tpm::tpm_app;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_attestor::testing::{boot_events, expected_pcrs, SoftwareAk};
use vouch_ca::clock::Clock;
use vouch_ca::store::{AttestJob, AttestWrite, AttestationResult, AttestationState};
use vouch_proto::ProblemCode;

/// A device enrolled with a software AK (the registry half of a TPM enrollment; the API half
/// is tested against swtpm in `tpm.rs`), with its mTLS client.
struct SoftDevice {
    id: String,
    serial: String,
    ak: SoftwareAk,
    client: reqwest::Client,
}

async fn soft_device(app: &TestApp) -> SoftDevice {
    let r = app
        .post(
            "/v1/bootstrap-tokens",
            Some(&app.admin),
            &json!({"zone": "sensors", "device_class": "sensor"}),
        )
        .await;
    let jti = r.json::<Value>().await.unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let soft = crate::tpm_fleet::enroll_soft(
        &app.server.state,
        &jti,
        app.clock.now(),
        time::Duration::hours(1),
    )
    .await;
    SoftDevice {
        id: soft.device_id,
        serial: soft.serial,
        client: client_for(&app.root_pem(), Some(&soft.identity)),
        ak: soft.ak,
    }
}

/// A fresh challenge for `device`.
async fn fetch_challenge(app: &TestApp, device: &SoftDevice) -> Value {
    let r = device
        .client
        .post(app.url("/v1/attest/challenge"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// Challenge, then a quote of a boot of `firmware`: the answer's status.
async fn attest(app: &TestApp, device: &SoftDevice, firmware: &str) -> StatusCode {
    let challenge = fetch_challenge(app, device).await;
    let body = quote_body(device, &challenge, firmware);
    submit(app, device, &body).await
}

fn quote_body(device: &SoftDevice, challenge: &Value, firmware: &str) -> Value {
    let nonce = hex::decode(challenge["nonce"].as_str().unwrap()).unwrap();
    let values = expected_pcrs(firmware, "cfg-a");
    let (attest, signature) = device.ak.quote(&nonce, &values);
    let log = vouch_attestor::eventlog::write_log(&boot_events(firmware, "cfg-a"));
    let pcr_values: serde_json::Map<String, Value> = values
        .iter()
        .map(|(p, v)| (p.to_string(), json!(hex::encode(v))))
        .collect();
    json!({"nonce": challenge["nonce"], "quote": B64.encode(attest),
           "signature": B64.encode(signature), "pcr_values": pcr_values,
           "event_log": B64.encode(log)})
}

async fn submit(app: &TestApp, device: &SoftDevice, body: &Value) -> StatusCode {
    device
        .client
        .post(app.url("/v1/attest/quote"))
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn many_devices_attesting_at_once_each_get_their_own_result() {
    for db in [Db::Sqlite, Db::Postgres] {
        let (app, _refs) = tpm_app(db).await;
        let mut fleet = Vec::new();
        for _ in 0..40 {
            fleet.push(soft_device(&app).await);
        }
        // Every third device booted firmware that no reference set accepts.
        let firmware = |i: usize| if i % 3 == 0 { "fw-rogue" } else { "fw-1" };
        let statuses = futures_util::future::join_all(
            fleet
                .iter()
                .enumerate()
                .map(|(i, d)| attest(&app, d, firmware(i))),
        )
        .await;
        for (i, (device, status)) in fleet.iter().zip(&statuses).enumerate() {
            let record = app.device_json(&device.id).await;
            let history = app.attestation_history(&device.id).await;
            let results = &history;
            assert_eq!(results.len(), 1, "{db:?} device {i}: {history:?}");
            if firmware(i) == "fw-1" {
                assert_eq!(*status, StatusCode::OK, "{db:?} device {i}");
                assert_eq!(record["attestation"], "active");
                assert!(record["last_attested"].as_i64().is_some());
                assert_eq!(results[0]["outcome"], "pass");
            } else {
                assert_eq!(
                    *status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{db:?} device {i}"
                );
                assert_eq!(record["attestation"], "quarantined");
                assert!(record["last_attested"].is_null());
                let reason = record["attestation_reason"].as_str().unwrap();
                assert!(reason.contains("firmware integrity"), "{reason}");
                assert_eq!(results[0]["outcome"], "fail");
            }
        }
        // Twice more each: the second pass of an active device changes no state, so the
        // audit log gains nothing from it.
        let audit_before = app.counts().await.audit_records;
        for (i, device) in fleet.iter().enumerate() {
            if firmware(i) == "fw-1" {
                assert_eq!(attest(&app, device, "fw-1").await, StatusCode::OK);
            }
        }
        assert_eq!(app.counts().await.audit_records, audit_before, "{db:?}");
    }
}

#[tokio::test]
async fn one_nonce_answered_twice_at_once_is_recorded_once() {
    for db in [Db::Sqlite, Db::Postgres] {
        let (app, _refs) = tpm_app(db).await;
        let device = soft_device(&app).await;
        for _ in 0..10 {
            let challenge = fetch_challenge(&app, &device).await;
            let body = quote_body(&device, &challenge, "fw-1");
            let (a, b) = tokio::join!(submit(&app, &device, &body), submit(&app, &device, &body));
            let mut got = [a, b];
            got.sort();
            assert_eq!(got, [StatusCode::OK, StatusCode::FORBIDDEN], "{db:?}");
        }
        let history = app.attestation_history(&device.id).await;
        assert_eq!(history.len(), 10, "{db:?}");
    }
}

/// A passing result for `device` answering `nonce` (the registry does not check nonces' tags; the
/// API does that before verification).
fn job(app: &TestApp, device: &SoftDevice, nonce: &str) -> AttestJob {
    AttestJob {
        nonce: nonce.to_owned(),
        device_id: device.id.clone(),
        serial: device.serial.clone(),
        ak_public: hex::encode(&device.ak.ak_public),
        now: app.clock.unix(),
        result: AttestationResult::Pass {
            reference_set: "fw-1".into(),
        },
    }
}

#[tokio::test]
async fn a_batch_with_a_used_nonce_and_a_revoked_device_records_only_the_others() {
    for db in [Db::Sqlite, Db::Postgres] {
        let app = spawn_app(db).await;
        let registry = &app.server.state.registry;
        let (a, b, c) = (
            soft_device(&app).await,
            soft_device(&app).await,
            soft_device(&app).await,
        );
        let used = random_hex(32);
        let first = registry
            .commit_attestation_batch(&[job(&app, &a, &used)])
            .await
            .unwrap();
        assert_eq!(first, [AttestWrite::Recorded(AttestationState::Active)]);
        let r = app
            .post(
                &format!("/v1/devices/{}/revoke", c.id),
                Some(&app.admin),
                &json!({"reason": "decommissioned"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);

        // One batch: a replayed nonce, a fresh result, a revoked device's result.
        let audit_before = app.counts().await.audit_records;
        let writes = registry
            .commit_attestation_batch(&[
                job(&app, &a, &used),
                job(&app, &b, &random_hex(32)),
                job(&app, &c, &random_hex(32)),
            ])
            .await
            .unwrap();
        assert_eq!(
            writes,
            [
                AttestWrite::NonceUsed,
                AttestWrite::Recorded(AttestationState::Active),
                AttestWrite::NotCurrent,
            ],
            "{db:?}"
        );
        assert_eq!(app.attestation_history(&a.id).await.len(), 1, "{db:?}");
        assert_eq!(app.attestation_history(&b.id).await.len(), 1, "{db:?}");
        assert_eq!(app.attestation_history(&c.id).await.len(), 0, "{db:?}");
        assert_eq!(app.device_json(&b.id).await["attestation"], "active");
        assert_eq!(app.device_json(&c.id).await["attestation"], "none");
        // One audit record: b's change of state (a was active already; c recorded nothing).
        assert_eq!(app.counts().await.audit_records, audit_before + 1, "{db:?}");

        // A result verified with an AK that is no longer the device's, beside a good one.
        let mut stale_ak = job(&app, &b, &random_hex(32));
        stale_ak.ak_public = hex::encode(&c.ak.ak_public);
        let writes = registry
            .commit_attestation_batch(&[job(&app, &a, &random_hex(32)), stale_ak])
            .await
            .unwrap();
        assert_eq!(
            writes,
            [
                AttestWrite::Recorded(AttestationState::Active),
                AttestWrite::NotCurrent
            ],
            "{db:?}"
        );
        assert_eq!(app.attestation_history(&a.id).await.len(), 2, "{db:?}");
        assert_eq!(app.attestation_history(&b.id).await.len(), 1, "{db:?}");

        // Results that all hold are recorded together.
        let writes = registry
            .commit_attestation_batch(&[
                job(&app, &a, &random_hex(32)),
                job(&app, &b, &random_hex(32)),
            ])
            .await
            .unwrap();
        assert_eq!(
            writes,
            [AttestWrite::Recorded(AttestationState::Active); 2],
            "{db:?}"
        );
        assert_eq!(app.counts().await.audit_records, audit_before + 1, "{db:?}");
    }
}

#[tokio::test]
async fn hostile_quote_submissions_fail_closed_and_oversized_ones_are_refused_unread() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let device = soft_device(&app).await;
    // Each answers a good nonce with something broken: the device is quarantined for it.
    let breakages: Vec<(&str, Value)> = vec![
        ("quote", json!("%%% not base64")),
        ("quote", json!(B64.encode([0xffu8; 40]))),
        ("signature", json!(B64.encode(b"short"))),
        ("pcr_values", json!({"99": hex::encode([0u8; 32])})),
        ("pcr_values", json!({"0": "zz"})),
        ("event_log", json!(B64.encode(b"\x00\x01 not a log"))),
    ];
    for (field, value) in breakages {
        let c = fetch_challenge(&app, &device).await;
        let mut body = quote_body(&device, &c, "fw-1");
        body[field] = value;
        assert_eq!(
            submit(&app, &device, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}"
        );
        let record = app.device_json(&device.id).await;
        assert_eq!(record["attestation"], "quarantined", "{field}");
    }
    // A body past the route's limit is refused before it is read: its nonce stays good.
    let c = fetch_challenge(&app, &device).await;
    let mut body = quote_body(&device, &c, "fw-1");
    body["event_log"] = json!("A".repeat(1024 * 1024));
    assert_eq!(
        submit(&app, &device, &body).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let good = quote_body(&device, &c, "fw-1");
    assert_eq!(submit(&app, &device, &good).await, StatusCode::OK);
    // Unknown fields and malformed nonces are refused as requests, not held against the
    // device.
    let c = fetch_challenge(&app, &device).await;
    let mut body = quote_body(&device, &c, "fw-1");
    body["extra"] = json!(1);
    assert!(submit(&app, &device, &body).await.is_client_error());
    for nonce in [
        "not hex".to_owned(),
        "zz".repeat(32),
        "00".repeat(33),
        c["nonce"].as_str().unwrap()[..62].to_owned(),
    ] {
        let mut body = quote_body(&device, &c, "fw-1");
        body["nonce"] = json!(nonce);
        assert_eq!(submit(&app, &device, &body).await, StatusCode::FORBIDDEN);
    }
    let record = app.device_json(&device.id).await;
    assert_eq!(record["attestation"], "active");
}

#[tokio::test]
async fn a_revoked_device_records_no_result_though_the_server_remembers_its_keys() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let device = soft_device(&app).await;
    // The first attestation reads the device; the server keeps its keys in memory.
    assert_eq!(attest(&app, &device, "fw-1").await, StatusCode::OK);
    let challenge: Value = fetch_challenge(&app, &device).await;
    let r = app
        .post(
            &format!("/v1/devices/{}/revoke", device.id),
            Some(&app.admin),
            &json!({"reason": "stolen from the lab"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A quote answering a nonce issued before the revocation records nothing.
    let body = quote_body(&device, &challenge, "fw-1");
    let r = device
        .client
        .post(app.url("/v1/attest/quote"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some(ProblemCode::DeviceRevoked.as_str())
        )
    );
    let history = app.attestation_history(&device.id).await;
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn a_reload_that_changes_the_pcrs_between_challenge_and_quote_records_nothing() {
    let (app, refs) = tpm_app(Db::Sqlite).await;
    let device = soft_device(&app).await;
    let challenge: Value = fetch_challenge(&app, &device).await;
    assert_eq!(challenge["pcrs"], json!([0, 1, 2, 3, 4, 5, 6, 7, 8]));
    // The class now quotes the boot PCRs only (no configuration PCR).
    let mut values = vouch_attestor::testing::reference_values_json(&[("fw-1", "fw-1", "cfg-a")]);
    let class = &mut values["device_classes"]["sensor"];
    class["pcrs"] = json!([0, 1, 2, 3, 4, 5, 6, 7]);
    class["accepted"][0]
        .as_object_mut()
        .unwrap()
        .remove("config");
    std::fs::write(
        refs.path().join("reference-values.json"),
        values.to_string(),
    )
    .unwrap();
    let r = app
        .post("/v1/policy/reload", Some(&app.admin), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // The quote answers what was asked; it is not held against the device.
    let body = quote_body(&device, &challenge, "fw-1");
    assert_eq!(submit(&app, &device, &body).await, StatusCode::FORBIDDEN);
    let record = app.device_json(&device.id).await;
    assert_eq!(record["attestation"], "none");
    // Asked again, it quotes the new selection and passes.
    let challenge: Value = fetch_challenge(&app, &device).await;
    assert_eq!(challenge["pcrs"], json!([0, 1, 2, 3, 4, 5, 6, 7]));
    let nonce = hex::decode(challenge["nonce"].as_str().unwrap()).unwrap();
    let values: std::collections::BTreeMap<u8, [u8; 32]> = expected_pcrs("fw-1", "cfg-a")
        .into_iter()
        .filter(|(p, _)| *p < 8)
        .collect();
    let (attest, signature) = device.ak.quote(&nonce, &values);
    let pcr_values: serde_json::Map<String, Value> = values
        .iter()
        .map(|(p, v)| (p.to_string(), json!(hex::encode(v))))
        .collect();
    let body = json!({"nonce": challenge["nonce"], "quote": B64.encode(attest),
                      "signature": B64.encode(signature), "pcr_values": pcr_values});
    assert_eq!(submit(&app, &device, &body).await, StatusCode::OK);
}

/// Every group-commit writer (enrollments, attestation results, decisions) holds its
/// connection across batches. When PostgreSQL ends every session (as when it restarts), the
/// batch on the dead connection fails as a whole; the writer drops that connection and
/// commits each job again on its own, on a fresh one. So the very next enrollment,
/// attestation and decision succeed, and each is recorded once.
#[tokio::test]
async fn every_writer_recovers_when_postgresql_drops_its_connection() {
    let (app, _refs) = tpm_app(Db::Postgres).await;
    let device = soft_device(&app).await;
    // Each writer now holds its connection.
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    assert_eq!(attest(&app, &device, "fw-1").await, StatusCode::OK);
    assert_eq!(
        app.telemetry_decision(&sensor, &gateway).await["decision"],
        "allow"
    );
    let before = app.counts().await;
    let decisions_before = app.server.state.registry.decision_count().await.unwrap();
    // Every other session of the server's database ends.
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    // The next write of each kind succeeds at once.
    app.enroll("sensors").await;
    assert_eq!(attest(&app, &device, "fw-1").await, StatusCode::OK);
    assert_eq!(
        app.telemetry_decision(&sensor, &gateway).await["decision"],
        "allow"
    );
    let after = app.counts().await;
    assert_eq!(after.devices, before.devices + 1);
    assert_eq!(
        app.server.state.registry.decision_count().await.unwrap(),
        decisions_before + 1
    );
    assert_eq!(app.device_json(&device.id).await["attestation"], "active");
    assert_eq!(app.attestation_history(&device.id).await.len(), 2);
}
