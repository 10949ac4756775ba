//! Vouch registration CA: device identities, the provisioning API and the device registry.
//!
//! The crate is split into pure cores and thin edges:
//! - [`pki`]: certificate authority material, the device certificate profile, CSR checks and
//!   CRLs. Plain functions over bytes and values; time and randomness come in from the caller.
//! - [`tokens`]: bootstrap and operator JWTs.
//! - [`nonce`]: attestation nonces authenticated by the server, stored only once used.
//! - [`store`]: the device registry over SQLite or PostgreSQL (sqlx), with one group-commit
//!   writer for enrollments, attestation results and the decision log.
//! - [`authz`]: the active and shadow policy sets (reloaded from a directory or Git work
//!   tree) and signed bundles.
//! - [`flows`]: one function per operation: its rules, in order, and the write that records
//!   its outcome.
//! - [`api`]: the axum router (handlers decode, call one flow, encode), problem responses and
//!   authentication extractors.
//! - [`server`]: the HTTPS/mTLS listener that serves the router.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod authz;
pub mod backup;
pub mod client;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod datadir;
pub mod flows;
pub use vouch_proto::ids;
pub mod metrics;
pub mod nonce;
pub mod pki;
pub mod server;
pub mod store;
pub mod tickets;
pub mod tokens;
pub(crate) mod verified_chains;
