//! Tests of the attestation verifier: quotes from a real software TPM (swtpm, driven with
//! tpm2-tools), and hostile inputs to every parser.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod credential;
mod endorsement;
mod hostile;
mod swtpm;
