//! Attestation state in the registry and its effects: a failed attestation quarantines a
//! device (policy denies, renewal refused) until an operator releases it; a silent device
//! becomes stale, by a sweep that runs once per period across replicas; every change is in
//! the device's history and the audit log. (The verifier that produces results is tested in
//! `attestor/tests/verify`.)

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::app;
use vouch_ca::store::{AttestationResult, AttestationState, SweepOutcome};
use vouch_ca::tokens::Role;
use vouch_proto::ProblemCode;

fn pass() -> AttestationResult {
    AttestationResult::Pass {
        reference_set: "fw-2.1".into(),
    }
}

#[tokio::test]
async fn quarantine_reaches_policy_and_renewal_until_released() {
    for db in [Db::Sqlite, Db::Postgres] {
        let app = spawn_app_with_example_policies(db).await;
        let sensor = app.enroll("sensors").await;
        let gateway = app.enroll("edge").await;
        let registry = &app.server.state.registry;
        use vouch_ca::clock::Clock;
        let now = app.clock.unix();

        let d = registry
            .record_attestation(sensor.device_id(), now, &pass())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.attestation, d.last_attested),
            (AttestationState::Active, Some(now))
        );
        assert_eq!(
            app.telemetry_decision(&sensor, &gateway).await["decision"],
            "allow"
        );

        let failed = AttestationResult::Fail {
            reason: "firmware integrity: PCR 0 differs".into(),
        };
        let d = registry
            .record_attestation(sensor.device_id(), now + 1, &failed)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.attestation, AttestationState::Quarantined, "{db:?}");
        assert_eq!(
            d.last_attested,
            Some(now),
            "a failure keeps the last good time"
        );
        let verdict = app.telemetry_decision(&sensor, &gateway).await;
        assert_eq!(verdict["decision"], "deny");
        assert_eq!(verdict["policies"], json!(["quarantine"]));
        app.assert_renewal_forbidden(&sensor, ProblemCode::DeviceQuarantined)
            .await;

        // Only a writer may release, with a reason; then policy and renewal work again.
        let path = format!("/v1/devices/{}/release", sensor.device_id());
        let auditor = app.token_for(Role::Auditor);
        let r = app
            .post(&path, Some(&auditor), &json!({"reason": "reflashed"}))
            .await;
        assert_eq!(problem(r).await.0, StatusCode::FORBIDDEN);
        let r = app
            .post(&path, Some(&app.admin), &json!({"reason": ""}))
            .await;
        assert_eq!(problem(r).await.0, StatusCode::UNPROCESSABLE_ENTITY);
        let r = app
            .post(&path, Some(&app.admin), &json!({"reason": "reflashed"}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let released: Value = r.json().await.unwrap();
        assert_eq!(released["attestation"], "active");
        let r = app
            .post(&path, Some(&app.admin), &json!({"reason": "again"}))
            .await;
        assert_eq!(
            problem(r).await.1["code"],
            ProblemCode::DeviceNotQuarantined.as_str()
        );
        assert_eq!(
            app.telemetry_decision(&sensor, &gateway).await["decision"],
            "allow"
        );
        assert_eq!(app.renew(&sensor).await.status(), StatusCode::CREATED);

        // The history, newest first, for any operator role.
        let r = app
            .get(
                &format!("/v1/devices/{}/attestations", sensor.device_id()),
                Some(&auditor),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let h: Value = r.json().await.unwrap();
        let outcomes: Vec<&str> = h["attestations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["released", "fail", "pass"], "{db:?}");
        assert_eq!(
            h["attestations"][1]["reason"],
            "firmware integrity: PCR 0 differs"
        );
        let audit = registry.recent_audit(20).await.unwrap();
        for action in ["device.attested", "device.quarantined", "device.released"] {
            assert!(
                audit.iter().any(|a| a.action == action),
                "{action} audited ({db:?})"
            );
        }
        let r = app
            .get(
                "/v1/devices/00000000000000000000000000000000/attestations",
                Some(&app.admin),
            )
            .await;
        assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);
        // History rows are append-only.
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&app.database_url)
            .await
            .unwrap();
        assert!(sqlx::query("DELETE FROM attestations")
            .execute(&mut conn)
            .await
            .is_err());
        assert!(registry
            .record_attestation("no-such-device", now, &pass())
            .await
            .unwrap()
            .is_none());
    }
}

#[tokio::test]
async fn a_silent_device_becomes_stale_in_one_sweep_per_period_across_replicas() {
    let app = spawn_app_with_example_policies(Db::Postgres).await;
    let other = replica_of(&app).await;
    let silent = app.enroll("sensors").await;
    let steady = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let registry = &app.server.state.registry;
    use vouch_ca::clock::Clock;
    let period = settings().attestation_period_secs;
    let grace = settings().attestation_grace_secs;
    let t0 = app.clock.unix();
    for d in [&silent, &steady] {
        registry
            .record_attestation(d.device_id(), t0, &pass())
            .await
            .unwrap();
    }

    // Within period + grace nothing is stale.
    app.clock.advance(period + grace - 10);
    app.assert_sweep_made_stale("replica-a", 0).await;
    // The steady device attests again; the silent one does not.
    registry
        .record_attestation(steady.device_id(), app.clock.unix(), &pass())
        .await
        .unwrap();

    // Next period: both replicas try at the same moment; one sweeps, one finds it done.
    app.clock.advance(period);
    let (a, b) = tokio::join!(
        app::run_sweep(&app.server.state, "replica-a"),
        app::run_sweep(&other.state, "replica-b")
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let ran: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, SweepOutcome::Ran { .. }))
        .collect();
    assert_eq!(ran.len(), 1, "{outcomes:?}");
    assert!(matches!(ran[0], SweepOutcome::Ran { stale: 1, .. }));
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, SweepOutcome::AlreadyRun { .. })));
    // Trying again in the same period does nothing.
    assert!(matches!(
        app::run_sweep(&other.state, "replica-b").await.unwrap(),
        SweepOutcome::AlreadyRun { .. }
    ));

    let d = registry.device(silent.device_id()).await.unwrap().unwrap();
    assert_eq!(d.attestation, AttestationState::Stale);
    let d = registry.device(steady.device_id()).await.unwrap().unwrap();
    assert_eq!(d.attestation, AttestationState::Active);
    assert_eq!(
        app.telemetry_decision(&silent, &gateway).await["policies"],
        json!(["quarantine"])
    );
    assert_eq!(
        app.telemetry_decision(&steady, &gateway).await["decision"],
        "allow"
    );
    app.assert_renewal_forbidden(&silent, ProblemCode::DeviceStale)
        .await;
    // The sweep that changed something is audited once, by the replica that ran it.
    let sweeps: Vec<_> = registry
        .recent_audit(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "attestation.sweep")
        .collect();
    assert_eq!(sweeps.len(), 1, "{sweeps:?}");
    assert!(sweeps[0].actor.starts_with("sweep:replica-"));

    // A passing attestation brings the stale device back.
    registry
        .record_attestation(silent.device_id(), app.clock.unix(), &pass())
        .await
        .unwrap();
    assert_eq!(
        app.telemetry_decision(&silent, &gateway).await["decision"],
        "allow"
    );
    other.stop().await;
}
