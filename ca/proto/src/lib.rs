//! The wire contract of Vouch: every request and response body exchanged with `vouch serve`,
//! the problem document and its [`ProblemCode`]s, and the typed identifiers both sides parse.
//! The server (`vouch-ca`) answers with these types and generates its OpenAPI document from
//! them; `vouch-agent` sends and reads the same types, so the two cannot drift apart.
//!
//! Binary fields travel as standard base64 (with padding) unless documented as hex; the
//! [`encoding`] helpers write them.
#![forbid(unsafe_code)]

pub mod attest;
pub mod bundle;
pub mod device;
pub mod encoding;
pub mod enroll;
pub mod ids;
pub mod peer;
pub mod policy;
pub mod problem;
pub mod tls;
pub mod validity;
pub mod workload;

pub use problem::{Problem, ProblemCode};
