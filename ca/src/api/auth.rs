//! Who is calling: operators by bearer JWT, devices by their mTLS client certificate.
//!
//! The two never mix: operator endpoints read only the `Authorization` header and verify it
//! with the operator key and audience, so neither a device certificate nor a bootstrap token
//! (other key, other audience) authenticates them.

use super::problem::ApiError;
use super::AppState;
use crate::ids::Serial;
use crate::tokens::{OperatorClaims, Role, TokenError, OPERATOR_AUDIENCE};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use rustls_pki_types::CertificateDer;

/// The client certificate of the TLS connection, read once per connection (not per request)
/// and inserted into each request by the server; rustls has already verified its chain up to
/// the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PeerCertificate {
    /// The client sent no certificate.
    #[default]
    None,
    /// The leaf does not parse as X.509.
    Unparsable,
    /// The leaf's serial is not one this CA issues to devices.
    NotADevice,
    /// A device certificate with this serial.
    Device(Serial),
}

impl PeerCertificate {
    /// Reads the leaf of a verified client chain.
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Self {
        let Some(leaf) = chain.and_then(<[_]>::first) else {
            return Self::None;
        };
        match x509_parser::parse_x509_certificate(leaf.as_ref()) {
            Err(_) => Self::Unparsable,
            Ok((_, cert)) => {
                Serial::from_der_bytes(cert.raw_serial()).map_or(Self::NotADevice, Self::Device)
            }
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The verified token claims.
    pub claims: OperatorClaims,
}

impl Operator {
    /// The audit actor name.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.claims.sub)
    }

    /// Refuses read-only roles.
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.claims.role.can_write() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_role",
                format!("role `{}` may only read", self.claims.role.as_str()),
            ))
        }
    }

    /// Refuses every role but admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.claims.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_role",
                "this call needs the `admin` role",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "operator endpoints need `Authorization: Bearer <operator token>`",
            )
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "authorization header must be `Bearer <operator token>`",
                )
            })?;
        let claims: OperatorClaims = state
            .operator_key
            .verify(
                token.trim(),
                OPERATOR_AUDIENCE,
                state.clock.unix(),
                state.settings.clock_skew_secs,
            )
            .map_err(|e| token_problem(&e, "operator"))?;
        Ok(Self { claims })
    }
}

/// The 401 for a refused token.
pub fn token_problem(e: &TokenError, kind: &str) -> ApiError {
    let code = match e {
        TokenError::Expired => "token_expired",
        TokenError::Malformed | TokenError::Invalid => "token_invalid",
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        code,
        format!("{kind} token refused: {e}"),
    )
}

/// A device authenticated by its client certificate.
#[derive(Debug, Clone)]
pub struct DeviceCaller {
    /// Serial of the presented certificate.
    pub serial: Serial,
}

impl FromRequestParts<AppState> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let required = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "client_certificate_required",
                "this call needs the device's certificate over mutual TLS",
            )
        };
        let serial = match parts.extensions.get::<PeerCertificate>() {
            None | Some(PeerCertificate::None) => return Err(required()),
            Some(PeerCertificate::Unparsable) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "client_certificate_invalid",
                    "client certificate does not parse",
                ))
            }
            Some(PeerCertificate::NotADevice) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "device_unknown",
                    "client certificate was not issued to a device by this CA",
                ))
            }
            Some(PeerCertificate::Device(serial)) => serial.clone(),
        };
        Ok(Self { serial })
    }
}
