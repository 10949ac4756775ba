//! The wire types of `docs/agent-protocol.md`: what the agent sends to `vouch serve` and what
//! it reads back. Binary fields are standard base64 (with padding) unless marked hex; the
//! conversions happen here, so the rest of the agent deals in bytes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The bootstrap token (a JWT).
    pub token: String,
    /// PKCS#10 CSR, PEM.
    pub csr_pem: String,
    /// Proof of credential activation, with a TPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmActivation>,
}

/// The `tpm` part of an enrollment: the activation answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmActivation {
    /// The activation id the server gave (hex).
    pub activation_id: String,
    /// The secret the TPM recovered.
    #[serde(with = "b64")]
    pub secret: Vec<u8>,
}

/// Answer of enrollment and renewal (other fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The registry's device id.
    pub device_id: String,
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// The zone in the certificate.
    pub zone: String,
    /// Certificate serial, hex.
    pub serial: String,
    /// The device certificate, PEM.
    pub certificate_pem: String,
    /// Issuing CA then root CA, PEM.
    pub ca_chain_pem: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
}

/// `POST /v1/enroll/tpm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEnrollRequest {
    /// The bootstrap token.
    pub token: String,
    /// The EK's `TPMT_PUBLIC`.
    #[serde(with = "b64")]
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER), if the TPM holds one.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<Vec<u8>>,
    /// The AK's `TPMT_PUBLIC`.
    #[serde(with = "b64")]
    pub ak_public: Vec<u8>,
}

/// Answer of `POST /v1/enroll/tpm`: a credential only this TPM can activate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationChallenge {
    /// Names the activation in the enrollment that follows (hex).
    pub activation_id: String,
    /// `TPM2B_ID_OBJECT`, size prefix included.
    #[serde(with = "b64")]
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`, size prefix included.
    #[serde(with = "b64")]
    pub encrypted_secret: Vec<u8>,
    /// When the activation expires, RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PKCS#10 CSR, PEM, for the new key.
    pub csr_pem: String,
}

/// Answer of `POST /v1/attest/challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestChallenge {
    /// The nonce to quote (hex, 32 bytes).
    #[serde(with = "hex")]
    pub nonce: Vec<u8>,
    /// The PCRs to quote.
    pub pcrs: Vec<u8>,
    /// The PCR bank (`sha256`).
    pub hash: String,
    /// When the nonce expires, RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/attest/quote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteRequest {
    /// The nonce of the challenge (hex).
    #[serde(with = "hex")]
    pub nonce: Vec<u8>,
    /// `TPMS_ATTEST`, no size prefix.
    #[serde(with = "b64")]
    pub quote: Vec<u8>,
    /// `TPMT_SIGNATURE`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// SHA-256 PCR values by index (decimal string keys, hex values).
    #[serde(with = "pcr_map")]
    pub pcr_values: BTreeMap<u8, [u8; 32]>,
    /// The TCG event log, if the device has one.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub event_log: Option<Vec<u8>>,
}

/// Answer of a passing `POST /v1/attest/quote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestResult {
    /// `pass`.
    pub result: String,
    /// The device's attestation state (`active`).
    pub attestation: String,
    /// The reference set the quote matched.
    #[serde(default)]
    pub reference_set: Option<String>,
}

/// An RFC 7807 problem: the agent acts on `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable machine-readable code, e.g. `token_used`.
    pub code: String,
    /// What went wrong, for a person.
    #[serde(default)]
    pub detail: String,
}

/// Standard base64 strings for byte fields.
pub mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Encodes.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Decodes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Optional standard base64 strings.
pub mod b64_opt {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Encodes.
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Decodes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Lowercase hex strings.
pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Encodes.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&::hex::encode(bytes))
    }

    /// Decodes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        ::hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// PCR values as `{"0": "<hex>", ...}`.
pub mod pcr_map {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    /// Encodes.
    pub fn serialize<S: Serializer>(
        values: &BTreeMap<u8, [u8; 32]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(
            values
                .iter()
                .map(|(k, v)| (k.to_string(), ::hex::encode(v))),
        )
    }

    /// Decodes.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u8, [u8; 32]>, D::Error> {
        use serde::de::Error;
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                let pcr = k.parse::<u8>().map_err(D::Error::custom)?;
                let mut value = [0u8; 32];
                ::hex::decode_to_slice(&v, &mut value).map_err(D::Error::custom)?;
                Ok((pcr, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_have_the_documented_shape() {
        let plain = EnrollRequest {
            token: "t".into(),
            csr_pem: "c".into(),
            tpm: None,
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"token": "t", "csr_pem": "c"})
        );
        let with_tpm = EnrollRequest {
            tpm: Some(TpmActivation {
                activation_id: "ab".into(),
                secret: vec![1, 2],
            }),
            ..plain
        };
        assert_eq!(
            serde_json::to_value(&with_tpm).unwrap(),
            json!({"token": "t", "csr_pem": "c",
                   "tpm": {"activation_id": "ab", "secret": "AQI="}})
        );
        let tpm = TpmEnrollRequest {
            token: "t".into(),
            ek_public: vec![0],
            ek_certificate: None,
            ak_public: vec![1],
        };
        assert_eq!(
            serde_json::to_value(&tpm).unwrap(),
            json!({"token": "t", "ek_public": "AA==", "ak_public": "AQ=="})
        );
        let quote = QuoteRequest {
            nonce: vec![0xab],
            quote: vec![1],
            signature: vec![2],
            pcr_values: [(0u8, [0u8; 32]), (10, [0xff; 32])].into(),
            event_log: None,
        };
        let value = serde_json::to_value(&quote).unwrap();
        assert_eq!(value["nonce"], "ab");
        assert_eq!(value["pcr_values"]["10"], "ff".repeat(32));
        let back: QuoteRequest = serde_json::from_value(value).unwrap();
        assert_eq!(back, quote);
    }

    #[test]
    fn answers_parse_and_bad_encodings_are_refused() {
        let c: ActivationChallenge = serde_json::from_value(json!({
            "activation_id": "01", "id_object": "AAE=", "encrypted_secret": "AAA=",
            "expires_at": "2030-01-01T00:00:00Z"}))
        .unwrap();
        assert_eq!(c.id_object, [0, 1]);
        assert!(serde_json::from_value::<ActivationChallenge>(json!({
            "activation_id": "01", "id_object": "!!", "encrypted_secret": "AAA=",
            "expires_at": "x"}))
        .is_err());
        assert!(serde_json::from_value::<AttestChallenge>(json!({
            "nonce": "zz", "pcrs": [0], "hash": "sha256", "expires_at": "x"}))
        .is_err());
        let r: AttestResult =
            serde_json::from_value(json!({"result": "pass", "attestation": "active"})).unwrap();
        assert_eq!(r.reference_set, None);
    }
}
