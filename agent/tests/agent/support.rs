//! Shared helpers: the software TPM (a fresh swtpm per test, from `vouch-attestor`'s
//! `testing` feature) opened through the agent's own TPM code, and polling with a deadline.

use std::time::{Duration, Instant};
use vouch_agent::tpm::Tpm;
pub use vouch_attestor::testing::{sha256, SoftwareTpm};

/// Opens `tpm` through the agent's quoter. (libtss2 logs the errors of the tests that
/// provoke them on stderr: the environment is not changed from a multi-threaded test.)
pub fn open(tpm: &SoftwareTpm) -> Tpm {
    Tpm::open(&tpm.tcti()).unwrap()
}

/// Waits (polling) until `cond` holds, at most `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
