//! Integration tests of the `vouch` server: a real HTTPS server on a loopback port, a real
//! SQLite file or PostgreSQL database, real `openssl` for interoperability, and the real
//! `vouch` binary where processes matter (replicas, logs, exit codes).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod attest_batch;
mod attestation;
mod backup;
mod config_file;
mod conformance;
mod connections;
mod crl_feed;
mod deploy;
mod enroll;
#[path = "../common/help_examples.rs"]
mod help_examples;
mod hostile;
mod impersonation;
mod interop;
mod layers;
mod logs;
mod operator_cli;
mod peers;
mod policy;
mod processes;
mod renew_revoke;
mod resumption;
mod roles;
mod schema_equality;
mod self_contained;
#[path = "../common/server_process.rs"]
mod server_process;
mod storage;
mod support;
mod tokens;
mod tpm;
mod tpm_enrollment;
#[path = "../common/tpm_fleet.rs"]
mod tpm_fleet;
mod unattested;
