//! Tests of the agent: the TPM quoter against a real software TPM (swtpm), the lifecycle
//! against a fake server, the binary against a real `vouch` server, and the receiver's
//! checks against certificates that server issues.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod command_line;
mod decision_spool;
mod docs;
mod e2e;
mod fake;
#[path = "../../../ca/tests/common/help_examples.rs"]
mod help_examples;
mod lifecycle;
mod link_order;
mod messaging;
mod policy_feed;
mod scenario;
mod server;
mod sidecar_support;
mod sidecars;
mod support;
mod tpm;
mod tpm_helper;
