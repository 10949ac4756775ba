//! Who is calling: operators by bearer JWT, devices by their mTLS client certificate.
//!
//! The two never mix: operator endpoints read only the `Authorization` header and verify it
//! with the operator key and audience, so neither a device certificate nor a bootstrap token
//! (other key, other audience) authenticates them.

use super::problem::ApiError;
use super::AppState;
use crate::ids::{DeviceId, Serial, TrustDomain};
use crate::store::{DeviceRecord, DeviceStatus};
use crate::tokens::{OperatorClaims, TokenError, OPERATOR_AUDIENCE};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use rustls_pki_types::CertificateDer;
use vouch_proto::ProblemCode;
use x509_parser::extensions::GeneralName;

/// The client certificate of the TLS connection, read once per connection (not per request)
/// and inserted into each request by the server; rustls has already verified that this
/// server's issuing CA signed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum PeerCertificate {
    /// The client sent no certificate.
    #[default]
    None,
    /// The leaf does not parse as X.509.
    Unparsable,
    /// The leaf is not a device certificate of this trust domain (its serial or its SPIFFE ID
    /// is not one this CA gives devices).
    NotADevice,
    /// A device certificate.
    Device(PeerDevice),
}

/// What identifies the device behind a client certificate: the issuing CA (checked by
/// rustls), the serial, and the device id of its SPIFFE ID, which must agree with the
/// registry's record of that serial; and its expiry, checked on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerDevice {
    /// The certificate's serial.
    pub serial: Serial,
    /// The device id of its SPIFFE ID (`spiffe://<trust domain>/device/<id>`).
    pub device_id: DeviceId,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

impl PeerCertificate {
    /// Reads the leaf of a verified client chain: a device certificate of `trust_domain` has
    /// a device serial and exactly one URI SAN, the device's SPIFFE ID in that domain.
    pub(crate) fn from_chain(
        chain: Option<&[CertificateDer<'_>]>,
        trust_domain: &TrustDomain,
    ) -> Self {
        let Some(leaf) = chain.and_then(<[_]>::first) else {
            return Self::None;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            return Self::Unparsable;
        };
        let serial = Serial::from_der_bytes(cert.raw_serial());
        let prefix = format!("spiffe://{}/device/", trust_domain.as_str());
        let device_id = match cert.subject_alternative_name() {
            Ok(Some(san)) => match san.value.general_names.as_slice() {
                [GeneralName::URI(uri)] => uri.strip_prefix(&prefix).and_then(DeviceId::parse),
                _ => None,
            },
            _ => None,
        };
        match (serial, device_id) {
            (Some(serial), Some(device_id)) => Self::Device(PeerDevice {
                serial,
                device_id,
                not_after: cert.validity().not_after.timestamp(),
            }),
            _ => Self::NotADevice,
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

    /// Refuses every role but `admin`.
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.claims.role == crate::tokens::Role::Admin {
            Ok(())
        } else {
            Err(ApiError::new(
                ProblemCode::ForbiddenRole,
                format!(
                    "only `admin` may do this, not `{}`",
                    self.claims.role.as_str()
                ),
            ))
        }
    }

    /// Refuses read-only roles.
    pub(crate) fn require_write(&self) -> Result<(), ApiError> {
        if self.claims.role.can_write() {
            Ok(())
        } else {
            Err(ApiError::new(
                ProblemCode::ForbiddenRole,
                format!("role `{}` may only read", self.claims.role.as_str()),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::new(
                ProblemCode::Unauthenticated,
                "operator endpoints need `Authorization: Bearer <operator token>`",
            )
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    ProblemCode::Unauthenticated,
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
        crate::flows::operator_tokens::check_not_revoked(state, &claims.jti).await?;
        Ok(Self { claims })
    }
}

/// The 401 for a refused token.
pub(crate) fn token_problem(e: &TokenError, kind: &str) -> ApiError {
    let code = match e {
        TokenError::Expired => ProblemCode::TokenExpired,
        TokenError::Malformed | TokenError::Invalid => ProblemCode::TokenInvalid,
    };
    ApiError::new(code, format!("{kind} token refused: {e}"))
}

/// The 403 for a client certificate that is itself revoked (superseded by a re-enrollment)
/// while its device is not.
pub(crate) fn certificate_revoked_problem() -> ApiError {
    ApiError::new(
        ProblemCode::CertificateRevoked,
        "this certificate is revoked (superseded); use the device's current certificate",
    )
}

/// A device authenticated by its client certificate (unexpired at this request).
#[derive(Debug, Clone)]
pub struct DeviceCaller {
    /// Serial of the presented certificate.
    pub serial: Serial,
    /// The device its SPIFFE ID names.
    pub device_id: DeviceId,
}

impl DeviceCaller {
    /// Refuses a registry record of the serial that names another device than the
    /// certificate's SPIFFE ID: a caller is identified by issuer, serial and SPIFFE ID, all
    /// three.
    pub(crate) fn check_record(&self, record_id: &str) -> Result<(), ApiError> {
        if record_id == self.device_id.as_str() {
            Ok(())
        } else {
            tracing::warn!(serial = %self.serial.to_hex(), certificate_device = %self.device_id.as_str(),
                registry_device = %record_id, "client certificate names another device than its serial");
            Err(ApiError::new(
                ProblemCode::DeviceUnknown,
                "client certificate does not match the registry's record of its serial",
            ))
        }
    }
}

impl FromRequestParts<AppState> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let required = || {
            ApiError::new(
                ProblemCode::ClientCertificateRequired,
                "this call needs the device's certificate over mutual TLS",
            )
        };
        let device = match parts.extensions.get::<PeerCertificate>() {
            None | Some(PeerCertificate::None) => return Err(required()),
            Some(PeerCertificate::Unparsable) => {
                return Err(ApiError::new(
                    ProblemCode::ClientCertificateInvalid,
                    "client certificate does not parse",
                ))
            }
            Some(PeerCertificate::NotADevice) => {
                return Err(ApiError::new(
                    ProblemCode::DeviceUnknown,
                    "client certificate was not issued to a device by this CA",
                ))
            }
            Some(PeerCertificate::Device(device)) => device,
        };
        // The handshake checked expiry once; a kept-alive connection may outlive the
        // certificate, so every request checks it again.
        if state.clock.unix() > device.not_after + state.settings.clock_skew_secs {
            return Err(ApiError::new(
                ProblemCode::ClientCertificateExpired,
                "the client certificate has expired; enroll again",
            ));
        }
        Ok(Self {
            serial: device.serial.clone(),
            device_id: device.device_id.clone(),
        })
    }
}

/// Who asks for a decision: an operator (bearer token) or a device (mTLS).
#[derive(Debug)]
pub enum Caller {
    /// An operator; may ask about any request.
    Operator(Operator),
    /// A device; may ask only about requests where it is the principal or the resource.
    Device(DeviceRecord),
}

impl Caller {
    /// How the decision log names the caller.
    pub(crate) fn name(&self) -> String {
        match self {
            Self::Operator(o) => o.actor(),
            Self::Device(d) => format!("device:{}", d.id),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // An `Authorization` header means an operator, and only an operator: a bad token is
        // refused, not retried as a device.
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(Self::Operator(
                Operator::from_request_parts(parts, state).await?,
            ));
        }
        let device = DeviceCaller::from_request_parts(parts, state).await?;
        let (record, certificate_revoked) = state
            .registry
            .device_by_serial(&device.serial.to_hex())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ProblemCode::DeviceUnknown,
                    "client certificate was not issued to a registered device",
                )
            })?;
        device.check_record(&record.id)?;
        if record.status != DeviceStatus::Active {
            return Err(ApiError::new(
                ProblemCode::DeviceRevoked,
                "this device is revoked",
            ));
        }
        if certificate_revoked {
            return Err(certificate_revoked_problem());
        }
        Ok(Self::Device(record))
    }
}
