//! Links `vouch-agent` with the functions it runs placed together, when lld is installed.
//!
//! Most of what a sidecar keeps resident is its own code, and the kernel maps a program's
//! code in 64 KiB windows around each page it touches (fault-around), so the code resident
//! depends on how the functions that run are spread over the text more than on how many
//! they are. `link/hot-functions.txt` lists the functions a sidecar runs (from its start
//! through sending, receiving and a burst; `scripts/agent-link-order.sh` writes it) and
//! lld's `--symbol-ordering-file` lays them out first, side by side. Without lld the agent
//! links as before (`VOUCH_AGENT_LINK_ORDER=0` also turns this off); names the list has that
//! the program no longer has are skipped, so a stale list costs memory, never correctness.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=VOUCH_AGENT_LINK_ORDER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let linux = var("CARGO_CFG_TARGET_OS") == "linux";
    // A cross build links with another toolchain, which may have no lld.
    let native = var("TARGET") == var("HOST");
    let wanted = var("VOUCH_AGENT_LINK_ORDER") != "0";
    let lld = Command::new("ld.lld")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !(linux && native && wanted && lld) {
        return;
    }
    let list = PathBuf::from(var("CARGO_MANIFEST_DIR")).join("link/hot-functions.txt");
    for arg in [
        "-fuse-ld=lld".to_owned(),
        format!("-Wl,--symbol-ordering-file={}", list.display()),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bin=vouch-agent={arg}");
    }
}
