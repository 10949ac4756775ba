//! The workload's local API (HTTP on the sidecar's Unix socket): what a workload sends and
//! what it reads back. Shared by the agent, its tests and workload client libraries.

use serde::{Deserialize, Serialize};

/// Largest payload a workload may send, bytes (before base64).
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// `POST /v1/send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The target device id.
    pub to: String,
    /// The data type policy decides on.
    pub data_type: String,
    /// `https` (direct, mutual TLS) or `mqtt` (through the broker); without it, direct
    /// when the peer takes direct deliveries.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The payload, base64.
    pub payload: String,
}

/// The answer to a message sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    /// The message id (hex).
    pub message_id: String,
    /// `https`: delivered, and `receipt` is the peer's signed receipt; `mqtt`: published to
    /// the broker (QoS 1), no receipt.
    pub via: String,
    /// The peer's receipt (a CWT: COSE_Sign1 by the peer's device key over `iss`, `aud`,
    /// `iat` and the message's `cti`), base64, checked by the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    /// The policies that allowed it.
    pub policies: Vec<String>,
    /// The version of the policy set that decided (a Git commit id for a policy
    /// repository); absent from agents older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
}

/// `POST /v1/seal`: seal a message for a workload that carries the envelope itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealRequest {
    /// The target device id.
    pub to: String,
    /// The data type policy decides on.
    pub data_type: String,
    /// The protocol the workload will carry it over (policy's `context.protocol`; the
    /// sidecar cannot vouch for that channel, so `tls` and `mtls` are false).
    pub protocol: String,
    /// The payload, base64.
    pub payload: String,
}

/// The answer to `POST /v1/seal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealResponse {
    /// The envelope (`application/cose`), base64.
    pub envelope: String,
    /// The message id (hex).
    pub message_id: String,
    /// The policies that allowed it.
    pub policies: Vec<String>,
    /// The version of the policy set that decided; absent from agents older than this
    /// field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
}

/// `POST /v1/open`: check and open an envelope a workload received itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// The envelope, base64.
    pub envelope: String,
    /// The protocol it arrived over (policy's `context.protocol`).
    pub protocol: String,
}

/// One message that arrived, as `GET /v1/messages` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrivedMessage {
    /// The sender's device id.
    pub from: String,
    /// The sender's SPIFFE ID.
    pub from_spiffe_id: String,
    /// The data type.
    pub data_type: String,
    /// The payload, base64.
    pub payload: String,
    /// When it was sent (Unix seconds, the sender's word).
    pub sent_at: u64,
    /// Its message id (hex).
    pub message_id: String,
}

/// `GET /v1/messages`: what arrived since the last read, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageList {
    /// The messages.
    pub messages: Vec<ArrivedMessage>,
}
