//! Vouch attestor: the verifier side of TPM 2.0 remote attestation, in pure Rust (no
//! tss-esapi, no libtss2), so the server builds and runs without a TPM.
//!
//! - [`credential`]: MakeCredential in software, for credential activation at enrollment.
//! - [`endorsement`]: whether an endorsement key may enroll (allowlist, EK certificate chain).
//! - [`tpm`]: strict parsers for `TPMS_ATTEST`, `TPMT_SIGNATURE`, `TPMT_PUBLIC` and PCR
//!   selections, and object names.
//! - [`eventlog`]: the TCG PC Client crypto-agile event log, and its replay.
//! - [`quote`]: quote verification: AK attributes and signature, qualified signer, nonce,
//!   PCR selection, PCR digest, event-log replay.
//! - [`submission`]: a quote submission's encoded fields, bounded and decoded.
//! - [`reference`]: reference values per device class, several accepted sets at once.
//!
//! Everything here is a plain function over bytes and values: no clock, no I/O. Every
//! length and count read from the wire is bounded before use ([`wire`]).
#![forbid(unsafe_code)]

pub mod credential;
pub mod endorsement;
pub mod eventlog;
pub mod quote;
pub mod reference;
pub mod submission;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tpm;
pub mod wire;

/// Why bytes from the wire do not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The input ends inside `what`.
    #[error("truncated: input ends inside the {0}")]
    Truncated(&'static str),
    /// A length or count beyond its limit.
    #[error("{what} is {len}, more than the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not `TPM_GENERATED_VALUE`.
    #[error("magic is {0:#010x}, not TPM_GENERATED (0xff544347)")]
    BadMagic(u32),
    /// A value this verifier does not accept.
    #[error("unsupported {what}: {value:#x}")]
    Unsupported {
        /// What it is.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// Bytes after the end of a structure.
    #[error("trailing bytes after the {0}")]
    TrailingBytes(&'static str),
    /// The event log's header is not what a crypto-agile log starts with.
    #[error("event log header: {0}")]
    BadLogHeader(&'static str),
}
