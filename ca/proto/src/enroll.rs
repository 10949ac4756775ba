//! Bootstrap tokens, enrollment (with or without a TPM) and renewal: `docs/agent-protocol.md`
//! describes the exchange.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Most labels a token may carry.
pub const MAX_LABELS: usize = 32;

/// `POST /v1/bootstrap-tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Zone the device will join: 1 to 63 lowercase letters, digits, `-`, `_`, `.`, starting
    /// with a letter or digit.
    #[schema(
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$",
        min_length = 1,
        max_length = 63
    )]
    pub zone: String,
    /// Token lifetime in seconds (default 3600, at most `--max-token-ttl`).
    #[schema(minimum = 60)]
    #[serde(
        default,
        deserialize_with = "vouch_policy::json::optional_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_seconds: Option<i64>,
    /// Labels the device will carry (at most 32; keys named like zones, values printable
    /// ASCII up to 255 characters).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Device class (reference values for attestation are chosen by it), named like a zone.
    #[schema(
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$",
        min_length = 1,
        max_length = 63
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// An existing device this token re-enrolls, e.g. after its disk was wiped. Only a TPM
    /// enrollment can use such a token, and only with the EK bound to that device.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenroll_device: Option<String>,
}

/// `POST /v1/bootstrap-tokens` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenResponse {
    /// The one-time token (a JWT). Give it to the device; it is shown only here.
    pub token: String,
    /// The token id, as it appears in the audit log.
    pub token_id: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// SHA-256 of the root CA certificate, also inside the token.
    pub ca_sha256: String,
}

/// `POST /v1/operator-tokens/revoke` body: the id of an operator token (its `jti`, printed by
/// `vouch admin-token`), refused from now on by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeOperatorToken {
    /// The token id: 32 lowercase hex digits.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub token_id: String,
}

/// `POST /v1/operator-tokens/revoke` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokedOperatorToken {
    /// The token id.
    pub token_id: String,
    /// False if it was revoked already.
    pub newly_revoked: bool,
}

/// `POST /v1/enroll` body: a token and either a CSR or `generate_key: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The bootstrap token.
    pub token: String,
    /// PKCS#10 CSR, PEM. Names in it are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr_pem: Option<String>,
    /// Ask the server to generate the key pair (returned once, never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_key: Option<bool>,
    /// For a TPM device: the credential activation it answered (`POST /v1/enroll/tpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmProof>,
    /// A second PKCS#10 CSR (PEM) for the key-agreement key (ECDH P-256): the server issues a
    /// key-agreement certificate with the device certificate (same SPIFFE ID, zone and
    /// lifetime; keyUsage keyAgreement only). Messages are encrypted to that key; the device
    /// key only signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_agreement_csr_pem: Option<String>,
    /// Where peers deliver messages to this device (`https://…` for direct delivery,
    /// `mqtt://…` or `mqtts://…` for a broker); at most 4, each at most 256 characters.
    /// Registered with the key-agreement certificate, published by `GET /v1/peers/{id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 4)]
    pub advertise: Vec<String>,
}

/// Proof that the AK lives in the same TPM as the EK: the activated secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmProof {
    /// The `activation_id` of `POST /v1/enroll/tpm`.
    #[schema(max_length = 64)]
    pub activation_id: String,
    /// The secret `TPM2_ActivateCredential` recovered, base64.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64",
        max_length = 128
    )]
    pub secret: String,
}

/// Answer of enrollment and renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// The registry's device id.
    pub device_id: String,
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// The zone in the certificate (subject OU).
    pub zone: String,
    /// Certificate serial, hex.
    pub serial: String,
    /// The device certificate, PEM.
    pub certificate_pem: String,
    /// Issuing CA then root CA, PEM.
    pub ca_chain_pem: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// Only with `generate_key`: the private key (PKCS#8 PEM). Not stored by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    /// Only with `key_agreement_csr_pem`: the key-agreement certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_agreement_certificate_pem: Option<String>,
}

/// `POST /v1/renew` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10 CSR, PEM, for the new key (or the same key).
    pub csr_pem: String,
    /// A second PKCS#10 CSR (PEM) for the key-agreement key (ECDH P-256): the server issues a
    /// key-agreement certificate with the device certificate (same SPIFFE ID, zone and
    /// lifetime; keyUsage keyAgreement only). Messages are encrypted to that key; the device
    /// key only signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_agreement_csr_pem: Option<String>,
    /// Where peers deliver messages to this device (`https://…` for direct delivery,
    /// `mqtt://…` or `mqtts://…` for a broker); at most 4, each at most 256 characters.
    /// Registered with the key-agreement certificate, published by `GET /v1/peers/{id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 4)]
    pub advertise: Vec<String>,
}

/// `POST /v1/enroll/tpm` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmEnrollStart {
    /// The bootstrap token (checked, not used up).
    pub token: String,
    /// The EK's `TPMT_PUBLIC`, base64.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64"
    )]
    pub ek_public: String,
    /// The EK certificate (DER, base64), when the TPM has one.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
    /// The AK's `TPMT_PUBLIC`, base64.
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        content_encoding = "base64"
    )]
    pub ak_public: String,
}

/// `POST /v1/enroll/tpm` answer: the credential for `TPM2_ActivateCredential`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TpmChallenge {
    /// Names this activation in `POST /v1/enroll`.
    pub activation_id: String,
    /// `TPM2B_ID_OBJECT` (with its size), base64.
    pub id_object: String,
    /// `TPM2B_ENCRYPTED_SECRET` (with its size), base64.
    pub encrypted_secret: String,
    /// Answer before this time (RFC 3339).
    pub expires_at: String,
}

impl TpmChallenge {
    /// The `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET`, decoded.
    pub fn credential(&self) -> Result<(Vec<u8>, Vec<u8>), base64::DecodeError> {
        Ok((
            crate::encoding::from_base64(&self.id_object)?,
            crate::encoding::from_base64(&self.encrypted_secret)?,
        ))
    }
}
