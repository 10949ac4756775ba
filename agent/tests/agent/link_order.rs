//! The agent's code layout (agent/build.rs): where lld links the agent with the list, the
//! functions of `agent/link/hot-functions.txt` come first in its code, ahead of every other
//! function, so the pages a sidecar keeps resident are the ones it runs. Checked with
//! binutils' `nm` on the binary these tests run: a debug build shares only the standard
//! library's and ring's functions with the list, enough to see whether the linker got it.

use crate::server::AGENT;
use std::collections::{BTreeMap, HashSet};
use std::process::Command;

/// The binary's functions by address, and whether the list names any of the names an
/// address has (one function may have several, where identical code was merged).
fn functions_by_address() -> BTreeMap<u64, bool> {
    let list = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/link/hot-functions.txt"
    ))
    .unwrap();
    let hot: HashSet<&str> = list.lines().filter(|line| !line.starts_with('#')).collect();
    let out = Command::new("nm")
        .args(["--defined-only", AGENT])
        .output()
        .expect("binutils' nm runs");
    assert!(
        out.status.success(),
        "nm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut functions = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if let [address, "t" | "T", name] = line.split_whitespace().collect::<Vec<_>>()[..] {
            let listed = functions
                .entry(u64::from_str_radix(address, 16).unwrap())
                .or_insert(false);
            *listed |= hot.contains(name);
        }
    }
    functions
}

#[test]
fn the_functions_a_sidecar_runs_come_first_when_linked_with_the_list() {
    let functions = functions_by_address();
    let listed = functions.values().filter(|hot| **hot).count();
    // Where the listed functions end; in the usual link they are strewn over the whole code.
    let last_listed = functions
        .iter()
        .filter(|(_, hot)| **hot)
        .map(|(address, _)| *address)
        .max()
        .unwrap_or(0);
    let up_to_last = functions.range(..=last_listed).count();
    // lld orders whole sections: assembly files (ring's) bring their unlisted neighbours along.
    let laid_out = listed > 0 && up_to_last < 2 * listed;
    // What agent/build.rs decided: lld with the list, or the usual link.
    if env!("VOUCH_AGENT_LINK_LAYOUT") == "1" {
        assert!(
            listed > 100,
            "only {listed} of the list's functions are in the binary"
        );
        assert!(
            laid_out,
            "the {listed} listed functions are strewn among the first {up_to_last}: \
             agent/build.rs did not reach the linker"
        );
    } else {
        assert!(
            !laid_out,
            "agent/build.rs linked without the list, yet the list came first"
        );
    }
}
