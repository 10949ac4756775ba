//! The operator guide does not rot (issue 13, acceptance 6): every `sh` block of
//! `docs/operator-guide.md` runs, in order, in one shell, with this build's `vouch` and
//! `vouch-agent`, in a scratch directory. A command that fails fails the test.

use crate::server::AGENT;
use std::path::Path;
use std::process::Command;

/// The guide's runnable blocks: those fenced as `sh`.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an `sh` block is not closed");
    blocks
}

#[test]
fn every_sh_block_of_the_operator_guide_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(repo.join("docs/operator-guide.md")).unwrap();
    let blocks = sh_blocks(&guide);
    assert!(blocks.len() >= 10, "only {} runnable blocks", blocks.len());
    let bin = Path::new(AGENT).parent().unwrap();
    assert!(
        bin.join("vouch").exists(),
        "`vouch` beside vouch-agent in {}",
        bin.display()
    );

    let scratch = tempfile::tempdir().unwrap();
    let mut script = String::from(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null || true' EXIT\n",
    );
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '--- block {}'\n{block}", i + 1));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("timeout")
        .args(["300", "bash", "-c", &script])
        .current_dir(scratch.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", scratch.path())
        .env("VOUCH_SRC", repo.canonicalize().unwrap())
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the guide failed (exit {:?}) after:\n{shown}\n{errors}",
        out.status.code()
    );
    assert!(
        shown.contains(&format!("--- block {}", blocks.len())),
        "{shown}"
    );
    // What the guide says happens, happened.
    assert!(shown.contains("exit 1: one row was refused"), "{shown}");
    assert!(shown.contains("(5 policies, loaded"), "{shown}");
    assert!(shown.contains("revoked "), "{shown}");
    assert!(shown.contains("vouch.db: OK"), "{shown}");
}
