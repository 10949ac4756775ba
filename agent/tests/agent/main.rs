//! Tests of the agent: the TPM quoter against a real software TPM (swtpm), the lifecycle
//! against a fake server, and the binary against a real `vouch` server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod e2e;
mod fake;
mod lifecycle;
mod server;
mod support;
mod tpm;
