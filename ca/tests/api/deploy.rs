//! The deployment files in `deploy/` work as written (issue 13, acceptance 5): the systemd
//! units pass `systemd-analyze verify` with nothing to say, the container files pass hadolint,
//! and the Kubernetes manifests pass `kubernetes-validate --strict` against Kubernetes 1.30
//! (native sidecars). The linters come from PyPI into the interop environment
//! (`tests/interop/requirements.txt`, beside `VOUCH_PYTHON`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A tool installed beside the interop environment's interpreter.
fn venv_tool(name: &str) -> PathBuf {
    let python = std::env::var("VOUCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let tool = Path::new(&python)
        .parent()
        .map(|bin| bin.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    assert!(
        tool.exists(),
        "{} is missing (tests/run.sh installs tests/interop/requirements.txt and sets VOUCH_PYTHON)",
        tool.display()
    );
    tool
}

fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(deploy().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no {suffix} files in deploy/{dir}");
    found
}

/// Runs `command`; fails the test with its output unless it succeeds and says nothing on
/// stderr (`quiet_stderr`).
fn passes(command: &mut Command, quiet_stderr: bool) {
    let out = command.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && (!quiet_stderr || stderr.trim().is_empty()),
        "{command:?}: {}\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn systemd_units_verify_cleanly() {
    // A root with the units where an administrator installs them, the executables they name
    // (the server is the real binary; `true` stands for the agent, which this crate does not
    // build, and for `kill`, which a minimal machine may lack) and the system's own units
    // (sysinit.target, ...).
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in [
        "usr/local/bin",
        "bin",
        "etc/systemd/system",
        "usr/lib/systemd",
    ] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_vouch"), r.join("usr/local/bin/vouch")).unwrap();
    std::fs::copy("/bin/true", r.join("usr/local/bin/vouch-agent")).unwrap();
    std::fs::copy("/bin/true", r.join("bin/kill")).unwrap();
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("sysinit.target").exists())
        .expect("the system's units (systemd is installed by tests/run.sh)");
    passes(
        Command::new("cp")
            .args(["-r", system_units])
            .arg(r.join("usr/lib/systemd/system")),
        true,
    );
    let mut names = Vec::new();
    for unit in files("systemd", ".service") {
        let name = unit.file_name().unwrap().to_owned();
        std::fs::copy(&unit, r.join("etc/systemd/system").join(&name)).unwrap();
        names.push(name);
    }
    passes(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .args(&names),
        true,
    );
}

#[test]
fn container_files_pass_hadolint() {
    let hadolint = venv_tool("hadolint");
    for file in files("container", ".Dockerfile") {
        passes(Command::new(&hadolint).arg(&file), false);
    }
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    let validate = venv_tool("kubernetes-validate");
    passes(
        Command::new(validate)
            .args(["--strict", "--kubernetes-version", "1.30.0"])
            .args(files("kubernetes", ".yaml")),
        false,
    );
}
