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
//!
//! The names carry hashes that change with the compiler, so the list starts with the
//! `rustc --version` that made it, and another compiler links without it (with a warning).
//! `VOUCH_AGENT_LINK_LAYOUT` (1 or 0) tells the tests which way the agent was linked.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=VOUCH_AGENT_LINK_ORDER");
    let laid_out = lay_out();
    println!(
        "cargo:rustc-env=VOUCH_AGENT_LINK_LAYOUT={}",
        u8::from(laid_out)
    );
}

/// Hands lld the list if it applies here; says whether it did.
fn lay_out() -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let linux = var("CARGO_CFG_TARGET_OS") == "linux";
    // A cross build links with another toolchain, which may have no lld.
    let native = var("TARGET") == var("HOST");
    let wanted = var("VOUCH_AGENT_LINK_ORDER") != "0";
    if !(linux && native && wanted && runs("ld.lld", "--version").is_some()) {
        return false;
    }
    let list = PathBuf::from(var("CARGO_MANIFEST_DIR")).join("link/hot-functions.txt");
    let made_by = std::fs::read_to_string(&list)
        .ok()
        .and_then(|text| Some(text.lines().next()?.strip_prefix("# ")?.to_owned()));
    let compiler = runs(&var("RUSTC"), "--version");
    if made_by.is_none() || made_by != compiler {
        println!(
            "cargo:warning=agent/link/hot-functions.txt was made by {}, this is {}: linking \
             without it (bash scripts/agent-link-order.sh makes it again)",
            made_by.as_deref().unwrap_or("an unknown compiler"),
            compiler.as_deref().unwrap_or("an unknown compiler"),
        );
        return false;
    }
    for arg in [
        "-fuse-ld=lld".to_owned(),
        format!("-Wl,--symbol-ordering-file={}", list.display()),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bin=vouch-agent={arg}");
    }
    true
}

/// The first line `program arg` prints, if it runs and succeeds.
fn runs(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status
        .success()
        .then(|| text.lines().next().unwrap_or_default().trim().to_owned())
}
