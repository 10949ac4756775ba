//! A quote submission as it arrives (base64 TPM structures, PCR values as hex by decimal
//! index, an optional base64 event log), decoded into the bytes [`crate::quote::verify_quote`]
//! takes. Every field is bounded before it is decoded; a failure names the field.

use crate::eventlog::MAX_LOG_BYTES;
use crate::quote::Evidence;
use crate::tpm::MAX_STRUCTURE_BYTES;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::BTreeMap;

/// Most PCR values a submission may carry (a SHA-256 bank has 24 PCRs).
pub const MAX_PCR_VALUES: usize = 24;

/// A submission's fields, still encoded as the device sent them.
#[derive(Debug, Clone, Copy)]
pub struct EncodedSubmission<'a> {
    /// `TPMS_ATTEST`, base64.
    pub quote: &'a str,
    /// `TPMT_SIGNATURE`, base64.
    pub signature: &'a str,
    /// SHA-256 PCR values (hex) by decimal index.
    pub pcr_values: &'a BTreeMap<String, String>,
    /// The event log, base64.
    pub event_log: Option<&'a str>,
}

/// A decoded submission: the evidence's bytes, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSubmission {
    /// `TPMS_ATTEST` bytes.
    pub attest: Vec<u8>,
    /// `TPMT_SIGNATURE` bytes.
    pub signature: Vec<u8>,
    /// PCR values by index.
    pub pcr_values: BTreeMap<u8, [u8; 32]>,
    /// The event log's bytes.
    pub event_log: Option<Vec<u8>>,
}

impl DecodedSubmission {
    /// The evidence, borrowed, for [`crate::quote::verify_quote`].
    pub fn evidence(&self) -> Evidence<'_> {
        Evidence {
            attest: &self.attest,
            signature: &self.signature,
            pcr_values: &self.pcr_values,
            event_log: self.event_log.as_deref(),
        }
    }
}

/// Why a submission does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmissionError {
    /// A field's encoding is longer than its largest decoded size allows.
    #[error("{0} is too large")]
    TooLarge(&'static str),
    /// A field is not base64.
    #[error("{0} is not base64")]
    NotBase64(&'static str),
    /// More PCR values than a bank has.
    #[error("more than {MAX_PCR_VALUES} PCR values")]
    TooManyPcrs,
    /// A key of `pcr_values` is not an index below 24 (the key, cut to 8 characters).
    #[error("`{0}` is not a PCR index")]
    BadPcrIndex(String),
    /// A PCR value is not 32 bytes of hex.
    #[error("PCR {0}: not 32 bytes of hex")]
    BadPcrValue(u8),
}

/// Decodes `field` (base64) if its length allows at most `max` decoded bytes.
fn base64_field(what: &'static str, b64: &str, max: usize) -> Result<Vec<u8>, SubmissionError> {
    // Base64 of `max` bytes, with padding to spare.
    if b64.len() > max * 4 / 3 + 4 {
        return Err(SubmissionError::TooLarge(what));
    }
    B64.decode(b64)
        .map_err(|_| SubmissionError::NotBase64(what))
}

/// Decodes a submission, refusing oversized or malformed fields before any of the evidence
/// is parsed. The event log may be at most `max_event_log` bytes (the server bounds it below
/// [`MAX_LOG_BYTES`] to fit its request body limit).
pub fn decode_submission(
    submission: &EncodedSubmission<'_>,
    max_event_log: usize,
) -> Result<DecodedSubmission, SubmissionError> {
    let attest = base64_field("quote", submission.quote, MAX_STRUCTURE_BYTES)?;
    let signature = base64_field("signature", submission.signature, MAX_STRUCTURE_BYTES)?;
    let event_log = submission
        .event_log
        .map(|log| base64_field("event log", log, max_event_log.min(MAX_LOG_BYTES)))
        .transpose()?;
    if submission.pcr_values.len() > MAX_PCR_VALUES {
        return Err(SubmissionError::TooManyPcrs);
    }
    let mut pcr_values = BTreeMap::new();
    for (index, value) in submission.pcr_values {
        let index: u8 = index
            .parse()
            .ok()
            .filter(|&i| usize::from(i) < MAX_PCR_VALUES)
            .ok_or_else(|| SubmissionError::BadPcrIndex(index.chars().take(8).collect()))?;
        let digest = hex::decode(value)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or(SubmissionError::BadPcrValue(index))?;
        pcr_values.insert(index, digest);
    }
    Ok(DecodedSubmission {
        attest,
        signature,
        pcr_values,
        event_log,
    })
}
