//! Periodic attestation: the challenge, the quote submission and its outcome.

use crate::device::AttestationState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `POST /v1/attest/challenge` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestChallenge {
    /// The nonce to quote over (hex, 32 bytes).
    pub nonce: String,
    /// The PCRs to quote.
    pub pcrs: Vec<u8>,
    /// Their bank.
    pub hash: String,
    /// Answer before this time (RFC 3339).
    pub expires_at: String,
}

/// `POST /v1/attest/quote` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteSubmission {
    /// The nonce of the challenge (hex).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub nonce: String,
    /// `TPMS_ATTEST`, base64.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64"
    )]
    pub quote: String,
    /// `TPMT_SIGNATURE`, base64.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64"
    )]
    pub signature: String,
    /// SHA-256 PCR values by index (hex).
    pub pcr_values: BTreeMap<String, String>,
    /// The TCG crypto-agile event log, base64, if the device has one.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log: Option<String>,
}

/// `POST /v1/attest/quote` answer when the quote passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestOutcome {
    /// `pass`.
    pub result: String,
    /// The device's attestation state now.
    pub attestation: AttestationState,
    /// The reference set the quote met.
    pub reference_set: String,
}

impl AttestChallenge {
    /// The nonce, decoded from hex.
    pub fn nonce_bytes(&self) -> Result<Vec<u8>, hex::FromHexError> {
        hex::decode(&self.nonce)
    }
}

impl QuoteSubmission {
    /// A submission of `quote` (`TPMS_ATTEST`) and its `signature` (`TPMT_SIGNATURE`) over
    /// `nonce`, with the SHA-256 PCR values it covers and the event log, encoded for the wire.
    pub fn new(
        nonce: &[u8],
        quote: &[u8],
        signature: &[u8],
        pcr_values: &BTreeMap<u8, [u8; 32]>,
        event_log: Option<&[u8]>,
    ) -> Self {
        use crate::encoding::{base64, hex};
        Self {
            nonce: hex(nonce),
            quote: base64(quote),
            signature: base64(signature),
            pcr_values: pcr_values
                .iter()
                .map(|(pcr, value)| (pcr.to_string(), hex(value)))
                .collect(),
            event_log: event_log.map(base64),
        }
    }
}
