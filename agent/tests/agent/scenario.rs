//! The README's first command (issue 13, acceptance 1): `scripts/scenario.sh` runs the six
//! steps with the binaries of this build, exits 0 only if each behaved as described, and
//! leaves nothing running.

use crate::server::AGENT;
use std::path::Path;
use std::process::Command;

#[test]
fn the_six_step_scenario_behaves_as_described_and_leaves_nothing_running() {
    let bin = Path::new(AGENT).parent().unwrap();
    assert!(
        bin.join("vouch").exists(),
        "the scenario needs the `vouch` binary beside vouch-agent in {}: `cargo test --workspace` builds both (or `cargo build --bin vouch`)",
        bin.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/scenario.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("VOUCH_BIN_DIR", bin)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the scenario failed:\n{shown}\n{errors}"
    );
    for step in [
        "1. start the server",
        "2. three sidecars enroll",
        "3. the TPM sensor sends telemetry",
        "4. the TPM sensor's firmware changes",
        "5. the operator revokes the other sensor with the CLI",
        "6. a policy change is committed",
        "every step behaved as described",
    ] {
        assert!(shown.contains(step), "no `{step}` in:\n{shown}");
    }
    assert!(!shown.contains("FAILED"), "{shown}");
    assert!(
        shown.contains("decrypted: \"temperature=21.5C\""),
        "{shown}"
    );
    assert!(
        shown.contains("denied by sensors-only-through-gateways"),
        "{shown}"
    );
    assert!(
        shown.contains("allowed by gateway-forwards-telemetry"),
        "{shown}"
    );

    // Nothing it started runs on: every process it started had its work directory on its
    // command line.
    let work = shown
        .split("CA in ")
        .nth(1)
        .and_then(|rest| rest.split("/data").next())
        .expect("the work directory is printed");
    assert!(
        !Path::new(work).exists(),
        "the work directory {work} is left behind"
    );
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // A zombie (already exited, not yet reaped by init) has an empty command line.
        if cmdline.contains(work) {
            left.push(cmdline);
        }
    }
    assert!(left.is_empty(), "processes still run: {left:?}");
}
