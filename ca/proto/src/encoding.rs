//! How binary fields are written on the wire: standard base64 with padding, or lowercase hex.
//! The server decodes them where it checks them (bounded, with a problem naming the field).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Standard base64 with padding, as every base64 field is written.
pub fn base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a standard base64 field.
pub fn from_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(text)
}

/// Lowercase hex, as nonces, serials and PCR values are written.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}
