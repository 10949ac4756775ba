//! The `vouch-agent` binary against a real `vouch serve` (in-process) and, with a TPM, a
//! real swtpm: enrollment, restarts, renewal, outages, attestation and quarantine, the
//! command line's errors and `status`.

use crate::server::*;
use crate::support::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use vouch_attestor::testing::{boot_events, measure};
use vouch_proto::ProblemCode;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn arg(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_device_enrolls_once_and_restarts_without_its_token() {
    let server = RealServer::start(&[]).await;
    let token = server.token(lab()).await;
    let base = tempfile::tempdir().unwrap();
    let state = state_dir(&base);
    let out = agent(
        run_args(
            &server,
            &state,
            &["--once", "--advertise", "https://device.local:8444"],
        ),
        Some(&token),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = identity(&state);
    assert_eq!(id["tpm"], false);
    assert_eq!(id["zone"], "lab");
    let device_id = id["device_id"].as_str().unwrap().to_owned();
    let device = server.get(&format!("/v1/devices/{device_id}")).await;
    assert_eq!(device["current_serial"], id["serial"]);
    assert_eq!(mode(&state), 0o700);
    for f in [
        "identity.json",
        "key.pem",
        "cert.pem",
        "ca.pem",
        "ka-key.pem",
        "ka-cert.pem",
    ] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    // Its key-agreement certificate and endpoint are what peers find in the directory.
    let peer = server.get(&format!("/v1/peers/{device_id}")).await;
    let ka_cert = std::fs::read_to_string(state.join("ka-cert.pem")).unwrap();
    let first_block = |pem_text: &str| pem::parse_many(pem_text).unwrap()[0].contents().to_vec();
    assert_eq!(
        first_block(&ka_cert),
        first_block(peer["key_agreement_certificate_pem"].as_str().unwrap())
    );
    assert_eq!(
        peer["endpoints"],
        serde_json::json!(["https://device.local:8444"])
    );
    let log = stderr(&out);
    assert!(
        !log.contains(&token) && !log.contains("PRIVATE KEY"),
        "{log}"
    );

    // Restarts load the state: no token, no second enrollment.
    let out = agent(run_args(&server, &state, &["--once"]), None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(identity(&state), id);
    let list = server.get("/v1/devices").await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);

    // status, as text and JSON.
    let out = agent(
        vec!["status".into(), "--state-dir".into(), arg(&state)],
        None,
    )
    .await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&device_id) && text.contains("enrolled without a TPM"),
        "{text}"
    );
    let out = agent(
        vec![
            "status".into(),
            "--output".into(),
            "json".into(),
            "--state-dir".into(),
            arg(&state),
        ],
        None,
    )
    .await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["device_id"], device_id.as_str());
    assert_eq!(status["expired"], false);
    assert!(status["expires_in_seconds"].as_i64().unwrap() > 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_renews_and_keeps_its_identity_through_an_outage() {
    let mut server = RealServer::start(&["--cert-lifetime", "6s"]).await;
    let token = server.token(lab()).await;
    let base = tempfile::tempdir().unwrap();
    let state = state_dir(&base);
    let out = agent(run_args(&server, &state, &["--once"]), Some(&token)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let first = identity(&state)["serial"].clone();
    let mut process = AgentProcess::spawn(
        run_args(&server, &state, &["--max-retry-delay", "1s"]),
        base.path(),
    );
    // Renewed at about half of the 6 s lifetime.
    wait_for(Duration::from_secs(8), "a renewal", || {
        identity_is(&state, |i| i["serial"] != first)
    })
    .await;
    let renewed = identity(&state);
    // The key-agreement certificate was renewed with it.
    let ka_serial = |pem_text: &str| {
        let der = pem::parse_many(pem_text).unwrap()[0].contents().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.raw_serial().to_vec()
    };
    let peer = server
        .get(&format!(
            "/v1/peers/{}",
            renewed["device_id"].as_str().unwrap()
        ))
        .await;
    let ka_cert = std::fs::read_to_string(state.join("ka-cert.pem")).unwrap();
    assert_eq!(
        ka_serial(&ka_cert),
        ka_serial(peer["key_agreement_certificate_pem"].as_str().unwrap())
    );
    let device = server
        .get(&format!(
            "/v1/devices/{}",
            renewed["device_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(device["current_serial"], renewed["serial"]);

    // The server goes away: the agent keeps its identity and retries while the certificate
    // is valid, then stops with a clear error when it expires.
    server.stop().await;
    wait_for(Duration::from_secs(8), "a failed renewal", || {
        process.log().contains("renewal failed")
    })
    .await;
    assert!(process.is_running(), "{}", process.log());
    assert_eq!(identity(&state)["serial"], renewed["serial"]);
    wait_for(
        Duration::from_secs(8),
        "the agent to stop at expiry",
        || !process.is_running(),
    )
    .await;
    let log = process.log();
    assert!(
        log.contains("vouch-agent: the device certificate expired"),
        "{log}"
    );
    assert!(
        !log.contains(&token) && !log.contains("PRIVATE KEY"),
        "{log}"
    );
    assert_eq!(process.terminate().code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_device_enrolls_attests_renews_and_is_quarantined_by_a_changed_boot() {
    let policies = policies();
    let server = RealServer::start(&[
        "--cert-lifetime",
        "8s",
        "--policy-dir",
        &arg(policies.path()),
    ])
    .await;
    let tpm = SoftwareTpm::start();
    measure(&tpm, &boot_events("fw-1", "cfg-a"));
    let token = server
        .token(json!({"zone": "sensors", "device_class": "sensor"}))
        .await;
    let base = tempfile::tempdir().unwrap();
    let state = state_dir(&base);
    let tpm_arg = ["--tpm", &tpm.tcti()].map(str::to_owned);
    let mut args = run_args(&server, &state, &["--once"]);
    args.extend(tpm_arg.clone());
    let out = agent(args, Some(&token)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = identity(&state);
    assert_eq!(id["tpm"], true);
    assert_eq!(id["last_attestation"]["result"], "pass");
    assert_eq!(id["last_attestation"]["reference_set"], "v1");
    assert_eq!(mode(&state.join("ak.json")), 0o600);
    let device_path = format!("/v1/devices/{}", id["device_id"].as_str().unwrap());
    assert_eq!(server.get(&device_path).await["attestation"], "active");

    // Running: attests every second and renews at about 4 s.
    let mut args = run_args(
        &server,
        &state,
        &["--attest-every", "1s", "--max-retry-delay", "1s"],
    );
    args.extend(tpm_arg);
    let mut process = AgentProcess::spawn(args, base.path());
    let first_at = id["last_attestation"]["at"].clone();
    wait_for(
        Duration::from_secs(10),
        "another attestation and a renewal",
        || {
            identity_is(&state, |i| {
                i["last_attestation"]["at"] != first_at && i["serial"] != id["serial"]
            })
        },
    )
    .await;
    let history = server.get(&format!("{device_path}/attestations")).await;
    assert!(
        history["attestations"].as_array().unwrap().len() >= 2,
        "{history}"
    );

    // The boot changes: the next quote fails, the device is quarantined, renewals are
    // refused, and the agent records it and keeps running.
    tpm.extend(0, &sha256(b"unsigned bootloader"));
    wait_for(Duration::from_secs(10), "a failed attestation", || {
        identity_is(&state, |i| i["last_attestation"]["result"] == "fail")
    })
    .await;
    assert_eq!(server.get(&device_path).await["attestation"], "quarantined");
    let reason = identity(&state)["last_attestation"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(ProblemCode::AttestationFailed.as_str()),
        "{reason}"
    );
    wait_for(Duration::from_secs(10), "a refused renewal", || {
        process
            .log()
            .contains(ProblemCode::DeviceQuarantined.as_str())
    })
    .await;
    assert!(process.is_running(), "{}", process.log());
    assert!(process.terminate().success());
    assert_eq!(open(&tpm).loaded_handles().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ek_certificate_goes_to_a_server_that_requires_one() {
    let (tpm, _der, manufacturer) = SoftwareTpm::start_with_ek_certificate();
    let policies = policies();
    let roots = policies.path().join("tpm-roots.pem");
    std::fs::write(&roots, manufacturer).unwrap();
    let server = RealServer::start(&[
        "--tpm-roots",
        &arg(&roots),
        "--policy-dir",
        &arg(policies.path()),
    ])
    .await;
    measure(&tpm, &boot_events("fw-1", "cfg-a"));
    let body = json!({"zone": "sensors", "device_class": "sensor"});
    let base = tempfile::tempdir().unwrap();
    let state = state_dir(&base);
    let mut args = run_args(&server, &state, &["--once", "--tpm", &tpm.tcti()]);
    let out = agent(args.clone(), Some(&server.token(body.clone()).await)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(identity(&state)["last_attestation"]["result"], "pass");

    // A TPM without an EK certificate is refused, with the server's code, and saves nothing.
    let bare = SoftwareTpm::start();
    let other = tempfile::tempdir().unwrap();
    args = run_args(
        &server,
        &state_dir(&other),
        &["--once", "--tpm", &bare.tcti()],
    );
    let out = agent(args, Some(&server.token(body).await)).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(ProblemCode::EkCertificateRequired.as_str()),
        "{err}"
    );
    assert!(!state_dir(&other).join("identity.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_pinning_another_ca_is_refused_before_enrolling() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let server = RealServer::start(&[]).await;
    let token = server.token(lab()).await;
    // The same token with another pin (the agent does not check signatures; the pin is
    // what protects it).
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["ca_sha256"] = json!("ab".repeat(32));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let base = tempfile::tempdir().unwrap();
    let state = state_dir(&base);
    let out = agent(run_args(&server, &state, &["--once"]), Some(&forged)).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("vouch-agent: ")
                && l.contains("is not the one the join token pins")),
        "{err}"
    );
    assert!(!state.join("identity.json").exists());
    assert_eq!(
        server.get("/v1/devices").await["devices"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_errors_are_one_clear_line() {
    let base = tempfile::tempdir().unwrap();
    let out = agent(
        vec!["run".into(), "--state-dir".into(), arg(base.path())],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("`server` is required"),
        "{}",
        stderr(&out)
    );
    let out = agent(
        vec![
            "run".into(),
            "--server".into(),
            "https://127.0.0.1:1".into(),
            "--state-dir".into(),
            arg(&base.path().join("s")),
            "--once".into(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no join token"), "{}", stderr(&out));
    let out = agent(
        vec![
            "status".into(),
            "--state-dir".into(),
            arg(&base.path().join("s")),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not enrolled"), "{}", stderr(&out));
    let out = agent(vec!["run".into(), "--bogus".into()], None).await;
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = agent(vec!["run".into(), "--help".into()], None).await;
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for flag in [
        "--server",
        "--state-dir",
        "--join-token",
        "--tpm",
        "--attest-every",
        "--config",
        "--once",
        "--max-retry-delay",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for line in stderr(&out).lines() {
        assert!(!line.contains("panicked"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_goes_with_each_quote_and_must_replay_to_it() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &arg(policies.path())]).await;
    let tpm = SoftwareTpm::start();
    let log = measure(&tpm, &boot_events("fw-1", "cfg-a"));
    let base = tempfile::tempdir().unwrap();
    let log_file = base.path().join("binary_bios_measurements");
    std::fs::write(&log_file, &log).unwrap();
    let token = server
        .token(json!({"zone": "sensors", "device_class": "sensor"}))
        .await;
    let state = state_dir(&base);
    let mut args = run_args(&server, &state, &["--once"]);
    args.extend(["--tpm", &tpm.tcti(), "--event-log", &arg(&log_file)].map(str::to_owned));
    let out = agent(args.clone(), Some(&token)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(identity(&state)["last_attestation"]["result"], "pass");

    // A log of another boot than the one the PCRs measured is caught by the server's replay.
    let other = vouch_attestor::eventlog::write_log(&boot_events("fw-2", "cfg-a"));
    std::fs::write(&log_file, other).unwrap();
    let out = agent(args.clone(), None).await;
    assert!(!out.status.success());
    let last = &identity(&state)["last_attestation"];
    assert_eq!(last["result"], "fail");
    assert!(
        last["reason"].as_str().unwrap().contains("event log"),
        "{last}"
    );

    // An unreadable log is not sent: the attempt is recorded as an error, nothing reaches
    // the server's history.
    std::fs::remove_file(&log_file).unwrap();
    let out = agent(args, None).await;
    assert!(!out.status.success());
    assert_eq!(identity(&state)["last_attestation"]["result"], "error");
    let device = identity(&state)["device_id"].as_str().unwrap().to_owned();
    let history = server
        .get(&format!("/v1/devices/{device}/attestations"))
        .await;
    assert_eq!(history["attestations"].as_array().unwrap().len(), 2);
}
