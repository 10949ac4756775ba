//! vouch-envelope's integration tests, one binary: real keys and certificates (a throwaway CA
//! made with rcgen), real cryptography, no mocks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cose_wg;
mod interop;
mod refusals;
mod round_trip;
mod support;
mod vectors;
