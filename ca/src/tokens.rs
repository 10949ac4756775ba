//! Bootstrap tokens (one-time enrollment credentials) and operator tokens (API bearer tokens).
//!
//! Both are JWTs (RFC 7519) signed with HS256. The server is the only party that verifies
//! them, so a symmetric key is the right tool; each kind has its own 256-bit key and its own
//! audience, so neither can stand in for the other. Expiry is checked against the caller's
//! clock (not the system clock) with a configured skew. Single use of bootstrap tokens is
//! enforced by the registry, not here.

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Issuer claim of every token.
pub(crate) const ISSUER: &str = "vouch";
/// Audience of bootstrap tokens.
pub const BOOTSTRAP_AUDIENCE: &str = "vouch-bootstrap";
/// Audience of operator tokens.
pub(crate) const OPERATOR_AUDIENCE: &str = "vouch-operator";
/// Longest life of an operator token, seconds (7 days): none lives long, and the deny-list of
/// revoked token ids need keep an id only this long.
pub const MAX_OPERATOR_TOKEN_TTL_SECS: i64 = 7 * 24 * 3600;
/// Longest token accepted, in bytes, before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, or longer than [`MAX_TOKEN_LEN`].
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// Signature, algorithm, audience or issuer wrong: not a token this server issued for
    /// this purpose.
    #[error("token signature or audience is not valid")]
    Invalid,
    /// Past its expiry (plus the allowed clock skew).
    #[error("token has expired")]
    Expired,
}

/// What a bootstrap token grants: one enrollment into `zone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapClaims {
    /// Issuer (`vouch`).
    pub iss: String,
    /// Audience (`vouch-bootstrap`).
    pub aud: String,
    /// Unique token id; the registry row that makes the token single-use.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Zone the device will be enrolled into.
    pub zone: String,
    /// Labels the device will carry.
    pub labels: BTreeMap<String, String>,
    /// Device class, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// The trust domain of the CA.
    pub trust_domain: String,
    /// SHA-256 of the root CA certificate (lowercase hex): the device pins the CA by it on
    /// first contact, before it trusts anything the server sends.
    pub ca_sha256: String,
    /// An existing device this token re-enrolls (TPM enrollment only: the device must present
    /// the endorsement key bound to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenroll_device: Option<String>,
}

/// Operator roles, from most to least privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Create tokens, revoke devices, read.
    Operator,
    /// Read only.
    Auditor,
}

impl Role {
    /// Parses `admin`, `operator` or `auditor`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "admin" => Some(Self::Admin),
            "operator" => Some(Self::Operator),
            "auditor" => Some(Self::Auditor),
            _ => None,
        }
    }

    /// Whether this role may change state.
    pub(crate) fn can_write(self) -> bool {
        matches!(self, Self::Admin | Self::Operator)
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
        }
    }
}

/// Claims of an operator token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorClaims {
    /// Issuer (`vouch`).
    pub iss: String,
    /// Audience (`vouch-operator`).
    pub aud: String,
    /// Who the operator is (free text, recorded in the audit log).
    pub sub: String,
    /// The operator's role.
    pub role: Role,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// The 32 bytes of a token key's file form (base64 text), if it is one.
pub(crate) fn key_bytes_from_file_text(text: &[u8]) -> Option<[u8; TOKEN_KEY_LEN]> {
    let trimmed = std::str::from_utf8(text).ok()?.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .ok()?;
    bytes.try_into().ok()
}

/// A 256-bit HMAC key for one kind of token.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Length of a token key in bytes.
pub(crate) const TOKEN_KEY_LEN: usize = 32;

impl TokenKey {
    /// Draws a new key and returns it with its file form (base64 text).
    pub fn generate(rng: &dyn SecureRandom) -> Result<(Self, String), ring::error::Unspecified> {
        let mut bytes = [0u8; TOKEN_KEY_LEN];
        rng.fill(&mut bytes)?;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        Ok((Self::from_bytes(&bytes), text))
    }

    /// Reads a key from its file form.
    pub fn from_file_text(text: &[u8]) -> Option<Self> {
        Some(Self::from_bytes(&key_bytes_from_file_text(text)?))
    }

    /// A key from its 32 bytes.
    pub(crate) fn from_bytes(bytes: &[u8; TOKEN_KEY_LEN]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
        }
    }

    /// Signs claims as an HS256 JWT.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|_| TokenError::Malformed)
    }

    /// Verifies a JWT for `audience` and checks expiry against `now` with `skew` seconds of
    /// tolerance. The HMAC comparison inside is constant-time (ring).
    pub fn verify<T>(
        &self,
        token: &str,
        audience: &str,
        now: i64,
        skew: i64,
    ) -> Result<T, TokenError>
    where
        T: for<'de> Deserialize<'de> + Expiring,
    {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        // Expiry is checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<T>(token, &self.decoding, &validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidIssuer
                | ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid,
                _ => TokenError::Malformed,
            }
        })?;
        if now >= data.claims.expires_at().saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }
}

/// Claims with an expiry time.
pub trait Expiring {
    /// Expiry, Unix seconds.
    fn expires_at(&self) -> i64;
}

impl Expiring for BootstrapClaims {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

impl Expiring for OperatorClaims {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

/// Makes a random token id (128 bits, hex).
pub(crate) fn random_jti(rng: &dyn SecureRandom) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> OperatorClaims {
        OperatorClaims {
            iss: ISSUER.into(),
            aud: OPERATOR_AUDIENCE.into(),
            sub: "t".into(),
            role: Role::Auditor,
            iat: 0,
            exp,
            jti: "j".into(),
        }
    }

    #[test]
    fn expiry_uses_the_given_clock_and_skew() {
        let rng = ring::rand::SystemRandom::new();
        let (key, _) = TokenKey::generate(&rng).unwrap();
        let t = key.sign(&claims(1000)).unwrap();
        let ok: Result<OperatorClaims, _> = key.verify(&t, OPERATOR_AUDIENCE, 999, 0);
        assert!(ok.is_ok());
        let late: Result<OperatorClaims, _> = key.verify(&t, OPERATOR_AUDIENCE, 1000, 0);
        assert_eq!(late.unwrap_err(), TokenError::Expired);
        let skewed: Result<OperatorClaims, _> = key.verify(&t, OPERATOR_AUDIENCE, 1030, 60);
        assert!(skewed.is_ok());
    }

    #[test]
    fn other_key_audience_and_algorithm_are_refused() {
        let rng = ring::rand::SystemRandom::new();
        let (key, text) = TokenKey::generate(&rng).unwrap();
        let (other, _) = TokenKey::generate(&rng).unwrap();
        let t = other.sign(&claims(i64::MAX)).unwrap();
        let r: Result<OperatorClaims, _> = key.verify(&t, OPERATOR_AUDIENCE, 0, 0);
        assert_eq!(r.unwrap_err(), TokenError::Invalid);
        let t = key.sign(&claims(i64::MAX)).unwrap();
        let r: Result<OperatorClaims, _> = key.verify(&t, BOOTSTRAP_AUDIENCE, 0, 0);
        assert_eq!(r.unwrap_err(), TokenError::Invalid);
        // `alg: none` with the same claims.
        let payload = t.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        let r: Result<OperatorClaims, _> = key.verify(&none, OPERATOR_AUDIENCE, 0, 0);
        assert!(r.is_err());
        assert!(TokenKey::from_file_text(text.as_bytes()).is_some());
        assert!(TokenKey::from_file_text(b"short").is_none());
    }
}
