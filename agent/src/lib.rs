//! Vouch agent: the device side of Vouch.
//!
//! - [`tpm`]: the TPM (tss-esapi): EK, AK, credential activation, quotes; run only in the
//!   `vouch-agent-tpm` helper process, which [`tpm_helper`] starts for each operation.
//! - [`state`]: the state directory (0700), written atomically.
//! - [`client`]: HTTPS to the server: CA pinning, then mutual TLS.
//! - [`lifecycle`]: the schedule; [`enroll`], [`renew`] and [`attest`]: its steps, retried
//!   through outages.
//! - [`schedule`]: renewal timing and backoff, pure functions of a clock and an RNG.
//! - [`token`], [`credentials`]: the join token, keys and certificates. The wire types are
//!   `vouch_proto`'s, the same the server answers with.
//! - [`messaging`]: messages between devices: peer trust, revocation, replay windows and
//!   the receiver's checks (the envelope is `vouch_envelope`'s).
//! - [`config`] and [`status`]: the command line.
#![forbid(unsafe_code)]

pub mod attest;
pub mod client;
pub mod config;
pub mod credentials;
pub mod enroll;
pub mod lifecycle;
pub mod messaging;
pub mod renew;
pub mod schedule;
pub mod state;
pub mod status;
pub mod token;
pub mod tpm;
pub mod tpm_helper;
