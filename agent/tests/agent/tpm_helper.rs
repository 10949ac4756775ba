//! The TPM helper (`vouch-agent-tpm`, see `vouch_agent::tpm_helper`): the agent links no TSS
//! and no OpenSSL, the helper does the TPM's work against a real swtpm, and the agent's side
//! of the protocol holds against a helper that is missing, fails, or misbehaves (real
//! programs standing in for a broken helper: `echo` answers garbage, `yes` never stops,
//! `true` says nothing).

use crate::server::AGENT;
use crate::support::*;
use std::path::PathBuf;
use std::process::Command;
use vouch_agent::tpm_helper::{HelperError, Reply, Request, TpmHelper};
use vouch_attestor::tpm::Public;

const HELPER: &str = env!("CARGO_BIN_EXE_vouch-agent-tpm");

/// The shared libraries `binary` names in its dynamic section (binutils' `readelf`).
fn needed(binary: &str) -> Vec<String> {
    let out = Command::new("readelf")
        .args(["--dynamic", binary])
        .output()
        .expect("binutils' readelf runs");
    assert!(out.status.success(), "readelf {binary}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| Some(line.split_once('[')?.1.trim_end_matches(']').to_owned()))
        .collect()
}

#[test]
fn only_the_helper_links_the_tss_and_openssl() {
    let helper = needed(HELPER);
    assert!(
        helper.iter().any(|lib| lib.starts_with("libtss2-esys")),
        "{helper:?}"
    );
    let agent = needed(AGENT);
    assert!(
        agent.iter().any(|lib| lib.starts_with("libc.")),
        "{agent:?}"
    );
    for lib in &agent {
        assert!(
            !lib.starts_with("libtss2")
                && !lib.starts_with("libcrypto")
                && !lib.starts_with("libssl"),
            "vouch-agent links {lib}: {agent:?}"
        );
    }
}

fn helper(tpm: &SoftwareTpm) -> TpmHelper {
    TpmHelper {
        path: HELPER.into(),
        tcti: tpm.tcti(),
    }
}

#[tokio::test]
async fn the_helper_creates_an_ak_and_quotes_with_it_leaving_nothing_loaded() {
    let tpm = SoftwareTpm::start();
    let helper = helper(&tpm);
    let Reply::CreatedAk { endorsement, ak } = helper.call(Request::CreateAk).await.unwrap() else {
        panic!("another reply")
    };
    Public::parse(&endorsement.public).unwrap();
    Public::parse(&ak.public).unwrap();
    let nonce = sha256(b"challenge").to_vec();
    let request = Request::Quote {
        ak: ak.clone(),
        nonce,
        pcrs: vec![0, 7],
    };
    let Reply::Quoted(quoted) = helper.call(request).await.unwrap() else {
        panic!("another reply")
    };
    assert_eq!(
        quoted.pcr_values.keys().copied().collect::<Vec<_>>(),
        [0, 7]
    );
    assert_eq!(open(&tpm).loaded_handles().unwrap(), 0);

    // A TPM refusal comes back as the helper's report, and still leaves nothing behind.
    let foreign = Request::Quote {
        ak: vouch_agent::tpm::AkBlobs {
            private: ak.private[..ak.private.len() / 2].to_vec(),
            public: ak.public,
        },
        nonce: vec![1; 32],
        pcrs: vec![0],
    };
    match helper.call(foreign).await {
        Err(HelperError::Tpm(message)) => assert!(message.contains("TPM"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(open(&tpm).loaded_handles().unwrap(), 0);
}

#[test]
fn an_unreachable_tpm_is_reported_by_the_helper() {
    // Port 9 (discard) has no TPM behind it.
    let helper = TpmHelper {
        path: HELPER.into(),
        tcti: "swtpm:host=127.0.0.1,port=9".into(),
    };
    match helper.call_blocking(&Request::CreateAk) {
        Err(HelperError::Tpm(message)) => assert!(message.contains("connection"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_or_broken_helper_is_a_clear_error_not_a_hang() {
    let missing = TpmHelper {
        path: PathBuf::from("/nonexistent/vouch-agent-tpm"),
        tcti: "device:/dev/tpmrm0".into(),
    };
    let e = missing.call_blocking(&Request::CreateAk).unwrap_err();
    assert!(matches!(e, HelperError::Start { .. }), "{e:?}");
    assert!(e.to_string().contains("--tpm-helper"), "{e}");

    // `echo` prints its arguments: not an answer.
    let garbage = TpmHelper {
        path: PathBuf::from("echo"),
        tcti: "x".into(),
    };
    let e = garbage.call_blocking(&Request::CreateAk).unwrap_err();
    assert!(e.to_string().contains("unreadable answer"), "{e}");

    // A helper that prints forever: read up to the bound, then stopped.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endless");
    std::fs::write(&path, "#!/bin/sh\nexec yes\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let endless = TpmHelper {
        path,
        tcti: "x".into(),
    };
    let e = endless.call_blocking(&Request::CreateAk).unwrap_err();
    assert!(e.to_string().contains("answered more than"), "{e}");

    // `true` answers nothing.
    let silent = TpmHelper {
        path: PathBuf::from("true"),
        tcti: "x".into(),
    };
    let e = silent.call_blocking(&Request::CreateAk).unwrap_err();
    assert!(e.to_string().contains("answered nothing"), "{e}");
}

#[test]
fn the_helper_refuses_a_bad_command_line() {
    let out = Command::new(HELPER).arg("--tpm").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn config_check_names_a_missing_helper() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AGENT)
        .args(["config", "check", "--server", "https://vouch.example:8443"])
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--tpm", "device:/dev/tpmrm0"])
        .args(["--tpm-helper", "/nonexistent/vouch-agent-tpm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`tpm-helper`: /nonexistent/vouch-agent-tpm is not a file"),
        "{stderr}"
    );

    // By default the helper is the one beside the agent, which the build puts there.
    let out = Command::new(AGENT)
        .args(["config", "check", "--server", "https://vouch.example:8443"])
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--tpm", "device:/dev/tpmrm0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("vouch-agent-tpm"), "{stdout}");
}
