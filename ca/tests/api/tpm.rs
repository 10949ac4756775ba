//! TPM devices over the API, against a real software TPM (swtpm driven by tpm2-tools):
//! enrollment bound to the EK and AK by credential activation, periodic attestation through
//! `/v1/attest/challenge` and `/v1/attest/quote` against reference values kept with the
//! policies, and each way a quote or an enrollment must be refused.

use crate::support::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use vouch_attestor::testing::{
    boot_events, measure, policy_dir_with_references, write_reference_values, SoftwareTpm, QUOTED,
};
use vouch_proto::ProblemCode;

/// The example policies with reference values for the `sensor` class accepting `sets`.
pub fn policies_with_references(sets: &[(&str, &str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    policy_dir_with_references(&example_policy_dir(), dir.path(), sets);
    dir
}

/// A TPM that booted `firmware` with `config`: EK and AK made, boot measured.
pub struct Booted {
    pub tpm: SoftwareTpm,
    pub log: Vec<u8>,
}

pub fn boot(firmware: &str, config: &str) -> Booted {
    let tpm = SoftwareTpm::start();
    tpm.create_ek_ak();
    let log = measure(&tpm, &boot_events(firmware, config));
    Booted { tpm, log }
}

/// A bootstrap token for a `sensor` in zone `sensors`, optionally re-enrolling a device.
pub async fn sensor_token(app: &TestApp, reenroll: Option<&str>) -> String {
    let mut body = json!({"zone": "sensors", "device_class": "sensor"});
    if let Some(id) = reenroll {
        body["reenroll_device"] = json!(id);
    }
    let r = app
        .post("/v1/bootstrap-tokens", Some(&app.admin), &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A server (on `db`) whose reference values accept firmware `fw-1` with configuration
/// `cfg-a`; keep the returned directory alive as long as the server.
pub async fn tpm_app(db: Db) -> (TestApp, TempDir) {
    let refs = policies_with_references(&[("fw-1", "fw-1", "cfg-a")]);
    let app = spawn_app_with_policies(db, policy_config(refs.path())).await;
    (app, refs)
}

/// A software TPM booted with `fw-1`/`cfg-a` and enrolled as a new sensor.
pub async fn enrolled_tpm(app: &TestApp) -> (Booted, Enrolled) {
    let booted = boot("fw-1", "cfg-a");
    let device = enroll_new_sensor(app, &booted.tpm).await;
    (booted, device)
}

/// `tpm` enrolls as a new sensor, which must succeed.
pub async fn enroll_new_sensor(app: &TestApp, tpm: &SoftwareTpm) -> Enrolled {
    tpm_enroll(app, tpm, &sensor_token(app, None).await)
        .await
        .unwrap()
}

/// Step 1 of a TPM enrollment: the credential to activate.
pub async fn start_tpm_enrollment(
    app: &TestApp,
    tpm: &SoftwareTpm,
    token: &str,
) -> reqwest::Response {
    app.post(
        "/v1/enroll/tpm",
        None,
        &json!({"token": token,
                "ek_public": B64.encode(tpm.public_area("ek.pub")),
                "ak_public": B64.encode(tpm.public_area("ak.pub"))}),
    )
    .await
}

/// Both steps: the device activates the credential and enrolls with the secret.
pub async fn tpm_enroll(
    app: &TestApp,
    tpm: &SoftwareTpm,
    token: &str,
) -> Result<Enrolled, (StatusCode, Value)> {
    let r = start_tpm_enrollment(app, tpm, token).await;
    if r.status() != StatusCode::CREATED {
        return Err(problem(r).await);
    }
    let challenge: Value = r.json().await.unwrap();
    let secret = tpm
        .activate_credential(
            &B64.decode(challenge["id_object"].as_str().unwrap())
                .unwrap(),
            &B64.decode(challenge["encrypted_secret"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
    let (csr, key_pem) = rcgen_csr();
    let r = app
        .post(
            "/v1/enroll",
            None,
            &json!({"token": token, "csr_pem": csr,
                    "tpm": {"activation_id": challenge["activation_id"], "secret": B64.encode(secret)}}),
        )
        .await;
    if r.status() != StatusCode::CREATED {
        return Err(problem(r).await);
    }
    Ok(Enrolled {
        body: r.json().await.unwrap(),
        key_pem,
    })
}

/// `device` asks for an attestation challenge.
pub async fn request_challenge(app: &TestApp, device: &Enrolled) -> reqwest::Response {
    app.device_client(device)
        .post(app.url("/v1/attest/challenge"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

/// A fresh nonce and selection for `device`.
pub async fn challenge(app: &TestApp, device: &Enrolled) -> (Vec<u8>, Vec<u8>) {
    let r = request_challenge(app, device).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["hash"], "sha256");
    let pcrs = v["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u8)
        .collect();
    (hex::decode(v["nonce"].as_str().unwrap()).unwrap(), pcrs)
}

/// The body of a quote of `pcrs` over `nonce` by `tpm`, with `log`.
pub fn quote_body(tpm: &SoftwareTpm, nonce: &[u8], pcrs: &[u8], log: &[u8]) -> Value {
    let (attest, signature, values) = tpm.quote(nonce, pcrs);
    let values: serde_json::Map<String, Value> = values
        .iter()
        .map(|(p, v)| (p.to_string(), json!(hex::encode(v))))
        .collect();
    json!({"nonce": hex::encode(nonce), "quote": B64.encode(attest),
           "signature": B64.encode(signature), "pcr_values": values,
           "event_log": B64.encode(log)})
}

pub async fn submit(app: &TestApp, device: &Enrolled, body: &Value) -> reqwest::Response {
    app.device_client(device)
        .post(app.url("/v1/attest/quote"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// One whole attestation of `device` by its booted TPM.
pub async fn attest(app: &TestApp, device: &Enrolled, booted: &Booted) -> reqwest::Response {
    let (nonce, pcrs) = challenge(app, device).await;
    submit(
        app,
        device,
        &quote_body(&booted.tpm, &nonce, &pcrs, &booted.log),
    )
    .await
}

/// Checks that `r` refuses a quote as a failed attestation whose detail mentions `why`.
async fn assert_attestation_failed(r: reqwest::Response, why: &str) {
    let p = assert_problem(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::AttestationFailed,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
}

#[tokio::test]
async fn a_tpm_device_enrolls_by_credential_activation_attests_and_renews() {
    for db in [Db::Sqlite, Db::Postgres] {
        let (app, _refs) = tpm_app(db).await;
        let booted = boot("fw-1", "cfg-a");
        let token = sensor_token(&app, None).await;
        let device = tpm_enroll(&app, &booted.tpm, &token).await.unwrap();

        let record = app.device_json(device.device_id()).await;
        let ek = vouch_ca::store::ek_fingerprint(&booted.tpm.public_area("ek.pub"));
        assert_eq!(record["ek_sha256"], json!(ek), "{db:?}");
        assert_eq!(record["attestation"], "none");

        let r = attest(&app, &device, &booted).await;
        assert_eq!(r.status(), StatusCode::OK, "{db:?}");
        let outcome: Value = r.json().await.unwrap();
        assert_eq!(outcome["result"], "pass");
        assert_eq!(outcome["reference_set"], "fw-1");
        let record = app.device_json(device.device_id()).await;
        assert_eq!(record["attestation"], "active");

        let history = app.attestation_history(device.device_id()).await;
        assert_eq!(history[0]["outcome"], "pass");
        assert_eq!(app.renew(&device).await.status(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn an_unexpected_firmware_digest_quarantines_the_device_denies_it_and_blocks_renewal() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let gateway = app.enroll("edge").await;
    let (booted, device) = enrolled_tpm(&app).await;
    assert_eq!(
        attest(&app, &device, &booted).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.telemetry_decision(&device, &gateway).await["decision"],
        "allow"
    );

    // Something extends a firmware PCR with a digest no reference set knows; the event log
    // does not record it either.
    booted.tpm.extend(0, &[0x66; 32]);
    assert_problem(
        attest(&app, &device, &booted).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::AttestationFailed,
    )
    .await;
    let record = app.device_json(device.device_id()).await;
    assert_eq!(record["attestation"], "quarantined");
    assert!(
        record["attestation_reason"]
            .as_str()
            .unwrap()
            .contains("PCR 0"),
        "{record}"
    );

    assert_eq!(
        app.telemetry_decision(&device, &gateway).await["decision"],
        "deny"
    );
    app.assert_renewal_forbidden(&device, ProblemCode::DeviceQuarantined)
        .await;
}

#[tokio::test]
async fn a_reused_unknown_foreign_or_expired_nonce_is_refused_and_changes_nothing() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (a, b) = (boot("fw-1", "cfg-a"), boot("fw-1", "cfg-a"));
    let device_a = enroll_new_sensor(&app, &a.tpm).await;
    let device_b = enroll_new_sensor(&app, &b.tpm).await;
    let nonce_invalid = |r| assert_problem(r, StatusCode::FORBIDDEN, ProblemCode::NonceInvalid);

    let (nonce, pcrs) = challenge(&app, &device_a).await;
    let body = quote_body(&a.tpm, &nonce, &pcrs, &a.log);
    assert_eq!(
        submit(&app, &device_a, &body).await.status(),
        StatusCode::OK
    );
    // The same nonce again (the same quote, too).
    nonce_invalid(submit(&app, &device_a, &body).await).await;

    // A's nonce, used by B (with a perfectly good quote from B's TPM).
    let (nonce, pcrs) = challenge(&app, &device_a).await;
    let foreign = quote_body(&b.tpm, &nonce, &pcrs, &b.log);
    nonce_invalid(submit(&app, &device_b, &foreign).await).await;

    // A nonce never issued.
    let unknown = quote_body(&b.tpm, &[7u8; 32], &QUOTED, &b.log);
    nonce_invalid(submit(&app, &device_b, &unknown).await).await;

    // A nonce answered after it expired (the server's clock moves past its 5 minutes).
    let (nonce, pcrs) = challenge(&app, &device_b).await;
    let late = quote_body(&b.tpm, &nonce, &pcrs, &b.log);
    app.clock.advance(vouch_ca::api::NONCE_TTL_SECS);
    nonce_invalid(submit(&app, &device_b, &late).await).await;

    // None of it touched B's state; A is still attested.
    assert_eq!(app.attestation_state(&device_b).await, "none");
    assert_eq!(app.attestation_state(&device_a).await, "active");
}

#[tokio::test]
async fn a_replayed_quote_is_refused() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (booted, device) = enrolled_tpm(&app).await;
    let (nonce, pcrs) = challenge(&app, &device).await;
    let old = quote_body(&booted.tpm, &nonce, &pcrs, &booted.log);
    assert_eq!(submit(&app, &device, &old).await.status(), StatusCode::OK);

    // Later, the old quote answers a fresh challenge.
    let (fresh, _) = challenge(&app, &device).await;
    let mut replay = old.clone();
    replay["nonce"] = json!(hex::encode(&fresh));
    assert_attestation_failed(submit(&app, &device, &replay).await, "nonce").await;
    assert_eq!(app.attestation_state(&device).await, "quarantined");
}

#[tokio::test]
async fn a_quote_signed_by_another_tpms_ak_is_refused() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (mine, other) = (boot("fw-1", "cfg-a"), boot("fw-1", "cfg-a"));
    let device = enroll_new_sensor(&app, &mine.tpm).await;
    let (nonce, pcrs) = challenge(&app, &device).await;
    let forged = quote_body(&other.tpm, &nonce, &pcrs, &other.log);
    assert_attestation_failed(submit(&app, &device, &forged).await, "signature").await;
    assert_eq!(app.attestation_state(&device).await, "quarantined");
}

#[tokio::test]
async fn a_pcr_selection_other_than_the_one_requested_is_refused() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (booted, device) = enrolled_tpm(&app).await;
    let (nonce, pcrs) = challenge(&app, &device).await;
    assert_eq!(
        pcrs,
        QUOTED.to_vec(),
        "the class's reference values choose the PCRs"
    );
    // Leave out the configuration PCR.
    let body = quote_body(&booted.tpm, &nonce, &QUOTED[..8], &booted.log);
    assert_attestation_failed(submit(&app, &device, &body).await, "selection").await;
}

#[tokio::test]
async fn an_event_log_that_does_not_replay_to_the_pcrs_is_refused() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let (booted, device) = enrolled_tpm(&app).await;
    let (nonce, pcrs) = challenge(&app, &device).await;
    // The log of another boot than the one measured.
    let other_log = vouch_attestor::eventlog::write_log(&boot_events("fw-2", "cfg-a"));
    let body = quote_body(&booted.tpm, &nonce, &pcrs, &other_log);
    assert_attestation_failed(submit(&app, &device, &body).await, "event log").await;
}

#[tokio::test]
async fn a_rollout_window_accepts_both_firmwares_until_the_old_one_is_removed() {
    let refs =
        policies_with_references(&[("fw-N", "fw-N", "cfg-a"), ("fw-N+1", "fw-N+1", "cfg-a")]);
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(refs.path())).await;
    let (old, new) = (boot("fw-N", "cfg-a"), boot("fw-N+1", "cfg-a"));
    let on_old = enroll_new_sensor(&app, &old.tpm).await;
    let on_new = enroll_new_sensor(&app, &new.tpm).await;
    let r = attest(&app, &on_old, &old).await;
    assert_eq!(r.json::<Value>().await.unwrap()["reference_set"], "fw-N");
    let r = attest(&app, &on_new, &new).await;
    assert_eq!(r.json::<Value>().await.unwrap()["reference_set"], "fw-N+1");

    // The rollout is done: firmware N leaves the reference values (a policy reload).
    write_reference_values(refs.path(), &[("fw-N+1", "fw-N+1", "cfg-a")]);
    assert_eq!(app.reload_policies().await.status(), StatusCode::OK);
    assert_eq!(attest(&app, &on_new, &new).await.status(), StatusCode::OK);
    let (status, _) = problem(attest(&app, &on_old, &old).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.attestation_state(&on_old).await, "quarantined");
    assert_eq!(app.attestation_state(&on_new).await, "active");
}

#[tokio::test]
async fn a_wrong_activation_secret_is_refused_and_writes_nothing() {
    let (app, _refs) = tpm_app(Db::Sqlite).await;
    let booted = boot("fw-1", "cfg-a");
    let token = sensor_token(&app, None).await;
    let r = start_tpm_enrollment(&app, &booted.tpm, &token).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let activation: Value = r.json().await.unwrap();
    let before = app.counts().await;
    let (csr, _) = rcgen_csr();
    let r = app
        .post(
            "/v1/enroll",
            None,
            &json!({"token": token, "csr_pem": csr,
                    "tpm": {"activation_id": activation["activation_id"], "secret": B64.encode([0u8; 32])}}),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, ProblemCode::ActivationInvalid).await;
    assert_eq!(app.counts().await, before);
    // The token is still good: the real TPM completes the enrollment.
    tpm_enroll(&app, &booted.tpm, &token).await.unwrap();
}

#[tokio::test]
async fn a_device_enrolled_without_a_tpm_has_no_attestation_key() {
    let app = spawn_app(Db::Sqlite).await;
    let device = app.enroll("sensors").await;
    assert_problem(
        request_challenge(&app, &device).await,
        StatusCode::CONFLICT,
        ProblemCode::NoAttestationKey,
    )
    .await;
}
