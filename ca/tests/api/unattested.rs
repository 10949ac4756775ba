//! A TPM-enrolled device that never attests does not keep the trust its TPM gives it: policy
//! sees it as `unattested` until its first passing attestation, the sweep makes it stale once
//! the attestation period and grace have passed since its TPM was bound, and re-enrollment
//! never clears a quarantine. A device quarantined after renewal's early check, before the
//! write, gets no certificate: the writing transaction checks again.

use crate::support::*;
use crate::tpm::{attest, enrolled_tpm, sensor_token, tpm_app, tpm_enroll};
use reqwest::StatusCode;
use vouch_ca::clock::Clock;
use vouch_ca::store::{AttestationResult, AttestationState, NewCertificate, RenewRefusal};
use vouch_proto::ProblemCode;

#[tokio::test]
async fn a_tpm_device_that_never_attests_is_unattested_then_stale() {
    for db in [Db::Sqlite, Db::Postgres] {
        let (app, _refs) = tpm_app(db).await;
        let gateway = app.enroll("edge").await;
        let without_tpm = app.enroll("sensors").await;
        let (booted, silent) = enrolled_tpm(&app).await;

        // Before its first attestation a TPM device is not trusted as one that attested.
        let decision = app.telemetry_decision(&silent, &gateway).await;
        assert_eq!(decision["decision"], "deny", "{db:?}: {decision}");
        // A device without a TPM never attests and is not held to it.
        let decision = app.telemetry_decision(&without_tpm, &gateway).await;
        assert_eq!(decision["decision"], "allow", "{db:?}: {decision}");

        // Within the period and grace of its enrollment nothing is stale.
        let period = settings().attestation_period_secs;
        let grace = settings().attestation_grace_secs;
        app.clock.advance(period + grace - 10);
        app.assert_sweep_made_stale("replica-a", 0).await;

        // Past it, without a quote: stale, and no renewal.
        app.clock.advance(period);
        app.assert_sweep_made_stale("replica-a", 1).await;
        // (Read from the registry: the operator token of `app` has expired by now.)
        let registry = &app.server.state.registry;
        let silent_now = registry.device(silent.device_id()).await.unwrap().unwrap();
        assert_eq!(silent_now.attestation, AttestationState::Stale);
        let other_now = registry
            .device(without_tpm.device_id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other_now.attestation, AttestationState::None);
        app.assert_renewal_forbidden(&silent, ProblemCode::DeviceStale)
            .await;

        // A passing attestation brings it back.
        assert_eq!(
            attest(&app, &silent, &booted).await.status(),
            StatusCode::OK
        );
        let decision = app.telemetry_decision(&silent, &gateway).await;
        assert_eq!(decision["decision"], "allow", "{db:?}: {decision}");
    }
}

#[tokio::test]
async fn re_enrollment_never_clears_a_quarantine() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (booted, device) = enrolled_tpm(&app).await;
    booted.tpm.extend(0, &[0x66; 32]);
    let (status, _) = problem(attest(&app, &device, &booted).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.attestation_state(&device).await, "quarantined");

    // The same TPM re-enrolls (say, after its disk was wiped): a new certificate, but the
    // quarantine stays until an operator releases it or an attestation passes.
    let token = sensor_token(&app, Some(device.device_id())).await;
    let again = tpm_enroll(&app, &booted.tpm, &token).await.unwrap();
    assert_eq!(again.device_id(), device.device_id());
    let record = app.device_json(device.device_id()).await;
    assert_eq!(record["attestation"], "quarantined", "{record}");
    app.assert_renewal_forbidden(&again, ProblemCode::DeviceQuarantined)
        .await;
}

/// The renewal race: the handler's early check has passed (the device was in good standing),
/// then an attestation fails, then the renewal is written. The registry refuses the write.
#[tokio::test]
async fn a_device_quarantined_before_the_renewal_is_written_gets_no_certificate() {
    for db in [Db::Sqlite, Db::Postgres] {
        let app = spawn_app(db).await;
        let device = app.enroll("sensors").await;
        let registry = &app.server.state.registry;
        let now = app.clock.unix();
        let fail = AttestationResult::Fail {
            reason: "PCR 0 does not match".into(),
        };
        registry
            .record_attestation(device.device_id(), now, &fail)
            .await
            .unwrap();
        let before = app.counts().await;
        let cert = NewCertificate {
            serial: random_hex(16),
            not_before: now,
            not_after: now + 3600,
            key_agreement: None,
        };
        let written = registry.renew(device.serial(), &cert, now).await.unwrap();
        assert_eq!(written, Err(RenewRefusal::DeviceQuarantined), "{db:?}");
        let after = app.counts().await;
        assert_eq!(after.certificates, before.certificates, "{db:?}");
        assert_eq!(after.audit_records, before.audit_records, "{db:?}");
    }
}
