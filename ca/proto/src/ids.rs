//! Identifiers and names that come from outside and end up in certificates or the registry:
//! each is validated once, at the edge, and is then a type that cannot hold a bad value.

use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty or longer than allowed.
    #[error("{kind} must be 1 to {max} characters, got {len}")]
    Length {
        /// What kind of name.
        kind: &'static str,
        /// The maximum length.
        max: usize,
        /// The length given.
        len: usize,
    },
    /// The name has a character outside its alphabet.
    #[error("{kind} `{value}` may only contain {allowed}")]
    Charset {
        /// What kind of name.
        kind: &'static str,
        /// The value given (already length-bounded).
        value: String,
        /// The allowed alphabet, in words.
        allowed: &'static str,
    },
}

fn check_name(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(usize, char) -> bool,
) -> Result<(), NameError> {
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(NameError::Length { kind, max, len });
    }
    if value.chars().enumerate().all(|(i, c)| ok(i, c)) {
        Ok(())
    } else {
        Err(NameError::Charset {
            kind,
            value: value.to_owned(),
            allowed,
        })
    }
}

fn lower_label_char(i: usize, c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && matches!(c, '-' | '_' | '.'))
}

/// A SPIFFE trust domain, e.g. `factory.example`: lowercase letters, digits, `.`, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_name(
            "trust domain",
            value,
            255,
            "lowercase letters, digits, `.`, `-` and `_`",
            lower_label_char,
        )?;
        Ok(Self(value.to_owned()))
    }

    /// The trust domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A zone name (e.g. `factory-1`), also used for device classes and label keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone(String);

impl Zone {
    /// Parses a zone name: 1-63 lowercase letters, digits, `-`, `_`, `.`, not starting with a
    /// punctuation character.
    pub fn parse(value: &str) -> Result<Self, NameError> {
        check_name(
            "zone",
            value,
            63,
            "lowercase letters, digits, `-`, `_` and `.`",
            lower_label_char,
        )?;
        Ok(Self(value.to_owned()))
    }

    /// The zone as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a device class name (same alphabet as zones).
pub fn check_device_class(value: &str) -> Result<(), NameError> {
    check_name(
        "device class",
        value,
        63,
        "lowercase letters, digits, `-`, `_` and `.`",
        lower_label_char,
    )
}

/// Checks a label key (same alphabet as zones) and value (printable ASCII, up to 255).
pub fn check_label(key: &str, value: &str) -> Result<(), NameError> {
    check_name(
        "label key",
        key,
        63,
        "lowercase letters, digits, `-`, `_` and `.`",
        lower_label_char,
    )?;
    let len = value.chars().count();
    if len > 255 {
        return Err(NameError::Length {
            kind: "label value",
            max: 255,
            len,
        });
    }
    if value.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        Ok(())
    } else {
        Err(NameError::Charset {
            kind: "label value",
            value: value.to_owned(),
            allowed: "printable ASCII",
        })
    }
}

/// A device identifier assigned by the registry: 128 random bits as 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Makes a new random device id.
    pub fn random(rng: &dyn SecureRandom) -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes)?;
        Ok(Self(hex::encode(bytes)))
    }

    /// Parses a device id given by a caller (32 lowercase hex digits).
    pub fn parse(value: &str) -> Option<Self> {
        let ok = value.len() == 32
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(value.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device's SPIFFE ID in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> String {
        format!("spiffe://{trust_domain}/device/{}", self.0)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A certificate serial number: 16 random octets, the first non-zero, so that the DER
/// INTEGER, the hex form in the registry, and what `openssl` prints all agree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial([u8; 16]);

impl Serial {
    /// Draws a new random serial.
    pub fn random(rng: &dyn SecureRandom) -> Result<Self, ring::error::Unspecified> {
        loop {
            let mut bytes = [0u8; 16];
            rng.fill(&mut bytes)?;
            if bytes.first().is_some_and(|b| *b != 0) {
                return Ok(Self(bytes));
            }
        }
    }

    /// Rebuilds a serial from its 32-digit hex form.
    pub fn from_hex(value: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(value, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Rebuilds a serial from the big-endian bytes of a certificate's serial number
    /// (a leading zero octet, as DER adds for a high first bit, is dropped).
    pub fn from_der_bytes(bytes: &[u8]) -> Option<Self> {
        let trimmed = match bytes {
            [0, rest @ ..] if rest.len() == 16 => rest,
            other => other,
        };
        <[u8; 16]>::try_from(trimmed).ok().map(Self)
    }

    /// The 16 serial octets.
    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lowercase hex, as stored in the registry.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A fresh system random number generator.
pub fn system_rng() -> SystemRandom {
    SystemRandom::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_are_strict() {
        assert!(Zone::parse("factory-1").is_ok());
        assert!(Zone::parse("").is_err());
        assert!(Zone::parse("-x").is_err());
        assert!(Zone::parse("Factory").is_err());
        assert!(Zone::parse("a/b").is_err());
        assert!(Zone::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn serial_round_trips_through_hex_and_der() {
        let rng = system_rng();
        for _ in 0..100 {
            let s = Serial::random(&rng).unwrap();
            assert_ne!(s.bytes()[0], 0);
            assert_eq!(Serial::from_hex(&s.to_hex()), Some(s.clone()));
            let mut der = vec![0u8];
            der.extend_from_slice(s.bytes());
            assert_eq!(Serial::from_der_bytes(&der), Some(s.clone()));
            assert_eq!(Serial::from_der_bytes(s.bytes()), Some(s));
        }
    }

    #[test]
    fn device_ids_parse_strictly() {
        let id = DeviceId::random(&system_rng()).unwrap();
        assert_eq!(DeviceId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(DeviceId::parse("../etc"), None);
        assert_eq!(DeviceId::parse(&id.as_str().to_uppercase()), None);
        let td = TrustDomain::parse("fleet.example").unwrap();
        assert!(id
            .spiffe_id(&td)
            .starts_with("spiffe://fleet.example/device/"));
    }
}
