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
    /// The payload, base64.
    pub payload: String,
}

/// The answer to a delivered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    /// The message id (hex) the receiver acknowledged.
    pub message_id: String,
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
