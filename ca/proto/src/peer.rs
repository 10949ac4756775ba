//! The peer directory: what a device needs to seal a message to another device and deliver
//! it (`GET /v1/peers/{device_id}`, device-authenticated), and the delivery endpoints a
//! device advertises at enrollment and renewal.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most delivery endpoints a device may advertise.
pub const MAX_ENDPOINTS: usize = 4;

/// Longest delivery endpoint, characters.
pub const MAX_ENDPOINT_LEN: usize = 256;

/// One device as its peers see it: the certificates to verify its signatures (device
/// certificate) and to encrypt to it (key-agreement certificate), and where it takes
/// deliveries. Peers cache it until the certificates expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerRecord {
    /// The device id.
    pub device_id: String,
    /// Its SPIFFE ID (both certificates carry it).
    pub spiffe_id: String,
    /// Its zone.
    pub zone: String,
    /// Its current device certificate, PEM.
    pub certificate_pem: String,
    /// Its current key-agreement certificate, PEM (keyUsage keyAgreement only).
    pub key_agreement_certificate_pem: String,
    /// Issuing CA then root CA, PEM.
    pub ca_chain_pem: String,
    /// When both certificates expire, RFC 3339.
    pub not_after: String,
    /// Where it takes deliveries (`https://…`, `mqtt://…`, `mqtts://…`).
    pub endpoints: Vec<String>,
    /// What policy sees of it now (zone, trust, status, class, labels), so that a sidecar
    /// decides locally with the same facts the server would.
    #[schema(value_type = Object)]
    pub facts: vouch_policy::model::DeviceFacts,
}

/// Checks advertised delivery endpoints: at most [`MAX_ENDPOINTS`], each an `https`, `mqtt`
/// or `mqtts` URL of at most [`MAX_ENDPOINT_LEN`] printable ASCII characters with a host.
pub fn check_endpoints(endpoints: &[String]) -> Result<(), String> {
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(format!(
            "at most {MAX_ENDPOINTS} endpoints may be advertised"
        ));
    }
    for url in endpoints {
        let printable = url.bytes().all(|b| b.is_ascii_graphic());
        if url.len() > MAX_ENDPOINT_LEN || !printable {
            return Err(format!(
                "an endpoint has at most {MAX_ENDPOINT_LEN} printable ASCII characters"
            ));
        }
        let rest = ["https://", "mqtt://", "mqtts://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .ok_or("an endpoint is an `https://`, `mqtt://` or `mqtts://` URL")?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.contains('@') {
            return Err("an endpoint names a host (and no user)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_bounded_urls_with_a_host() {
        let ok = |v: &[&str]| check_endpoints(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&[]).is_ok());
        assert!(ok(&["https://gw.local:8443", "mqtt://broker:1883", "mqtts://b/x"]).is_ok());
        for bad in [
            "http://gw",
            "https://",
            "https:///path",
            "mqtt://user@host",
            "https://a b",
            "ftp://x",
            "",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad}");
        }
        assert!(ok(&[&format!("https://{}", "a".repeat(MAX_ENDPOINT_LEN))]).is_err());
        assert!(ok(&["https://a"; MAX_ENDPOINTS + 1]).is_err());
    }
}
