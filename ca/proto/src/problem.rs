//! Problem documents (RFC 9457) and the stable codes they carry. Every code the server can
//! answer is a [`ProblemCode`] variant with its HTTP status; a client acts on the code, never on
//! the status or the detail text.

use serde::{Deserialize, Serialize};

macro_rules! problem_codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = ($code:literal, $status:literal), )+) => {
        /// A stable, machine-readable problem code: one variant per code, each with its HTTP
        /// status. The wire form is the snake_case string of [`ProblemCode::as_str`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemCode {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl ProblemCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ProblemCode] = &[$(ProblemCode::$variant,)+];

            /// The code as it appears in the problem document's `code` member.
            pub fn as_str(self) -> &'static str {
                match self { $(ProblemCode::$variant => $code,)+ }
            }

            /// The HTTP status answered with this code.
            pub fn status(self) -> u16 {
                match self { $(ProblemCode::$variant => $status,)+ }
            }

            /// What the code means, for people (the OpenAPI document and the docs list it).
            pub fn doc(self) -> &'static str {
                match self { $(ProblemCode::$variant => concat!($($doc),+).trim_ascii(),)+ }
            }

            /// The code named `text`, if it is one this version knows.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($code => Some(ProblemCode::$variant),)+ _ => None }
            }
        }
    };
}

problem_codes! {
    // Requests that do not parse or fit the schema.
    /// The body is not JSON.
    MalformedJson = ("malformed_json", 400),
    /// The body is JSON but does not fit the operation's schema (unknown, missing or
    /// mistyped fields, values out of bounds).
    InvalidBody = ("invalid_body", 422),
    /// The query string does not fit the operation's parameters.
    InvalidQuery = ("invalid_query", 400),
    /// The request cannot be read (e.g. the body ended early).
    BadRequest = ("bad_request", 400),
    /// The body is larger than the operation accepts.
    BodyTooLarge = ("body_too_large", 413),
    /// The body did not arrive in full within the server's time limit (a client that
    /// trickles or stops sending its body); the connection is closed.
    RequestBodyTimeout = ("request_body_timeout", 408),
    /// The body is not `application/json`.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// No such route.
    NotFound = ("not_found", 404),
    /// The route exists but not with this method (see `Allow`).
    MethodNotAllowed = ("method_not_allowed", 405),
    /// An unexpected error; the server log has the cause.
    Internal = ("internal", 500),
    /// The server cannot serve yet (its database is unreachable).
    NotReady = ("not_ready", 503),

    // Operators.
    /// No usable operator token (`Authorization: Bearer ...`).
    Unauthenticated = ("unauthenticated", 401),
    /// The operator token's role may not make this call.
    ForbiddenRole = ("forbidden_role", 403),
    /// An operator named a device the registry does not hold.
    DeviceNotFound = ("device_not_found", 404),
    /// The device is already revoked: it can be neither revoked nor re-enrolled again.
    DeviceAlreadyRevoked = ("device_already_revoked", 409),
    /// Release of a device that is not quarantined.
    DeviceNotQuarantined = ("device_not_quarantined", 409),
    /// A re-enrollment token for a device enrolled without a TPM.
    DeviceHasNoTpm = ("device_has_no_tpm", 409),
    /// A re-enrollment token naming another zone than the device's.
    ZoneMismatch = ("zone_mismatch", 409),

    // Bootstrap tokens and enrollment.
    /// The bootstrap or operator token's signature, audience or form is wrong.
    TokenInvalid = ("token_invalid", 401),
    /// The token has expired.
    TokenExpired = ("token_expired", 401),
    /// The operator token was revoked (`POST /v1/operator-tokens/revoke`) before it expired.
    TokenRevoked = ("token_revoked", 401),
    /// The bootstrap token was already used.
    TokenUsed = ("token_used", 403),
    /// The token re-enrolls a TPM device: only a TPM enrollment can use it.
    TokenRequiresTpm = ("token_requires_tpm", 422),
    /// The CSR does not parse as PKCS#10 PEM.
    CsrMalformed = ("csr_malformed", 400),
    /// The CSR's key is not one Vouch certifies.
    CsrUnsupportedKey = ("csr_unsupported_key", 400),
    /// The CSR's signature algorithm is not one Vouch accepts.
    CsrUnsupportedAlgorithm = ("csr_unsupported_algorithm", 400),
    /// The CSR's self-signature does not verify.
    CsrBadSignature = ("csr_bad_signature", 400),
    /// The CSR is larger than accepted.
    CsrTooLarge = ("csr_too_large", 413),

    // TPM enrollment.
    /// Neither TPM manufacturer roots nor an EK allowlist is configured.
    TpmEnrollmentUnconfigured = ("tpm_enrollment_unconfigured", 403),
    /// A TPM structure (public area, quote, signature) does not parse strictly.
    TpmStructureInvalid = ("tpm_structure_invalid", 422),
    /// The AK is not a restricted signing key created inside the TPM.
    NotAnAttestationKey = ("not_an_attestation_key", 422),
    /// The EK has no certificate, and the EK is not on the allowlist.
    EkCertificateRequired = ("ek_certificate_required", 422),
    /// The EK certificate does not chain to a configured root or does not match the EK.
    EkCertificateInvalid = ("ek_certificate_invalid", 422),
    /// The EK is already bound to another device.
    EkAlreadyEnrolled = ("ek_already_enrolled", 409),
    /// The activation is unknown, expired, used, or its secret is wrong.
    ActivationInvalid = ("activation_invalid", 403),
    /// Re-enrollment with another EK than the one bound to the device.
    EkMismatch = ("ek_mismatch", 403),

    // Devices over mutual TLS.
    /// The call needs the device's certificate over mutual TLS.
    ClientCertificateRequired = ("client_certificate_required", 401),
    /// The client certificate does not parse.
    ClientCertificateInvalid = ("client_certificate_invalid", 401),
    /// The client certificate has expired; enroll again.
    ClientCertificateExpired = ("client_certificate_expired", 401),
    /// The client certificate was not issued by this CA to a registered device.
    DeviceUnknown = ("device_unknown", 403),
    /// The device is revoked.
    DeviceRevoked = ("device_revoked", 403),
    /// The presented certificate is revoked (superseded by a re-enrollment).
    CertificateRevoked = ("certificate_revoked", 403),
    /// The device is quarantined (a failed attestation); only a passing one or an
    /// operator's release ends it.
    DeviceQuarantined = ("device_quarantined", 403),
    /// The device has not attested within its period and grace.
    DeviceStale = ("device_stale", 403),

    // Attestation.
    /// The device has no attestation key (enrolled without a TPM).
    NoAttestationKey = ("no_attestation_key", 409),
    /// The nonce is not one this server issued to this device, has expired or was used.
    NonceInvalid = ("nonce_invalid", 403),
    /// The quote failed verification; the device is now quarantined.
    AttestationFailed = ("attestation_failed", 422),

    // Policy.
    /// The decision request does not fit the policy schema.
    InvalidRequest = ("invalid_request", 422),
    /// A device asked a decision about another principal than itself.
    ForbiddenRequest = ("forbidden_request", 403),
    /// No active policy set is loaded.
    NoPolicy = ("no_policy", 404),
    /// The decision could not be logged, so it is not given.
    DecisionLogUnavailable = ("decision_log_unavailable", 503),
    /// The caller asked for more decisions than its rate allows; `Retry-After` says when
    /// to ask again.
    RateLimited = ("rate_limited", 429),

    // Peer directory.
    /// The device has no current key-agreement certificate (it enrolled or renewed without a
    /// key-agreement CSR), so no message can be sealed to it.
    NoKeyAgreementCertificate = ("no_key_agreement_certificate", 404),
    /// The peer is revoked: nothing may be sent to it.
    PeerRevoked = ("peer_revoked", 410),

    // Between sidecars.
    /// The receiving sidecar refused a message; the detail starts with the receiver's reason
    /// (`replayed`, `revoked`, `policy_denied`, ...).
    MessageRefused = ("message_refused", 403),
    /// The peer could not be reached (no delivery endpoint, connection or TLS failure).
    PeerUnreachable = ("peer_unreachable", 502),
    /// This sidecar's policy refuses the message; the detail names the deciding policies
    /// and the policy version.
    PolicyDenied = ("policy_denied", 403),
}

impl Serialize for ProblemCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The problem document (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` carries the machine-readable kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// Stable machine-readable code (see [`ProblemCode`]). A client reads it with
    /// [`Problem::problem_code`]: a code from a newer server is `None`, not an error.
    pub code: String,
    /// What went wrong, for a person.
    #[serde(default)]
    pub detail: String,
}

impl Problem {
    /// The code, if this version knows it.
    pub fn problem_code(&self) -> Option<ProblemCode> {
        ProblemCode::parse(&self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ProblemCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} declared twice");
            assert!(text.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert_eq!(ProblemCode::parse(text), Some(code));
            assert!((400..600).contains(&code.status()), "{text}");
            assert!(!code.doc().is_empty(), "{text}");
        }
        assert_eq!(ProblemCode::parse("no_such_code"), None);
    }

    #[test]
    fn a_problem_from_a_newer_server_still_parses() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"about:blank","title":"Teapot","status":418,"code":"brewing"}"#,
        )
        .unwrap();
        assert_eq!(p.problem_code(), None);
        assert_eq!(p.detail, "");
    }
}
