//! The HTTPS client to `vouch serve`: CA pinning on first contact, then every connection
//! verified against the pinned root alone, with the device's certificate for mutual TLS on
//! the device calls. Problem answers become [`ApiError::Problem`] with their `code`.

use crate::credentials::fingerprint;
use crate::lifecycle::{Api, ClientIdentity};
use reqwest::{Certificate, Client, Identity, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::RwLock;
use std::time::Duration;
use vouch_proto::attest::{AttestChallenge, AttestOutcome, QuoteSubmission};
use vouch_proto::enroll::{
    EnrollRequest, EnrollResponse, RenewRequest, TpmChallenge, TpmEnrollStart,
};
use vouch_proto::{Problem, ProblemCode};

/// Timeout of one request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest trust bundle read before pinning.
const MAX_BUNDLE_BYTES: usize = 64 * 1024;

/// Why a call to the server did not give an answer the agent can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No answer: connection, TLS or timeout. Worth retrying.
    #[error("cannot reach the server: {0}")]
    Transport(String),
    /// The server answered with a problem.
    #[error("server answered {status} `{code}`: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem's `code` as sent (one this version may not know, or `http_<status>`
        /// for an answer that is not a problem document).
        code: String,
        /// The problem's `detail`.
        detail: String,
    },
    /// The server answered something that is not the protocol.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The trust bundle is not the CA the join token pins.
    #[error("the server's root CA (sha256 {found}) is not the one the join token pins ({pinned})")]
    PinMismatch {
        /// Fingerprint of the root the server sent.
        found: String,
        /// Fingerprint in the token.
        pinned: String,
    },
    /// The pinned root or the device's credentials cannot be used for TLS.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

impl ApiError {
    /// Whether trying again later may succeed: no answer, a server-side error, or too many
    /// requests.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Problem { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The problem code, if the server answered with one this version knows.
    pub fn code(&self) -> Option<ProblemCode> {
        match self {
            Self::Problem { code, .. } => ProblemCode::parse(code),
            _ => None,
        }
    }
}

fn transport(e: reqwest::Error) -> ApiError {
    // reqwest's Display leaves out the cause; the chain says e.g. "connection refused".
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    ApiError::Transport(text)
}

/// Joins `server` and an API path.
fn url(server: &str, path: &str) -> String {
    format!("{}{}", server.trim_end_matches('/'), path)
}

/// Fetches `GET /v1/trust-bundle` *without* verifying the server, and accepts the root in it
/// only if the SHA-256 of its DER is `ca_sha256`. Returns the root, PEM.
pub async fn pin_root(server: &str, ca_sha256: &[u8; 32]) -> Result<String, ApiError> {
    let client = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .danger_accept_invalid_certs(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| ApiError::Tls(e.to_string()))?;
    let response = client
        .get(url(server, "/v1/trust-bundle"))
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    let body = response.bytes().await.map_err(transport)?;
    if !status.is_success() {
        return Err(problem(status, &body));
    }
    if body.len() > MAX_BUNDLE_BYTES {
        return Err(ApiError::Protocol("trust bundle is too large".into()));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::Protocol("trust bundle is not PEM".into()))?;
    let found = fingerprint(&text).map_err(|e| ApiError::Protocol(e.to_string()))?;
    // The pin is public (it is in the token): a plain comparison leaks nothing.
    if &found != ca_sha256 {
        return Err(ApiError::PinMismatch {
            found: hex::encode(found),
            pinned: hex::encode(ca_sha256),
        });
    }
    // Keep only the pinned certificate: nothing else in the bundle was checked.
    let der = crate::credentials::certificates(&text)
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Protocol("trust bundle is empty".into()))?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", der)))
}

fn problem(status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) => ApiError::Problem {
            status: status.as_u16(),
            code: p.code,
            detail: p.detail.chars().take(500).collect(),
        },
        Err(_) => ApiError::Problem {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            detail: status.canonical_reason().unwrap_or("error").to_owned(),
        },
    }
}

/// The server, reached over TLS verified against the pinned root alone.
#[derive(Debug)]
pub struct HttpApi {
    server: String,
    pinned: RwLock<Option<Pinned>>,
    /// The last mutual-TLS client and the certificate it presents: kept while the identity
    /// is the same, so frequent calls (uploads, directory lookups) reuse its connection.
    mtls_client: std::sync::Mutex<Option<(String, Client)>>,
}

/// The pinned root and a client trusting it alone.
#[derive(Debug, Clone)]
struct Pinned {
    root: Certificate,
    anonymous: Client,
}

impl HttpApi {
    /// A client of `server`; it trusts nothing until [`Api::pin_root`] or
    /// [`Api::trust_root`].
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            pinned: RwLock::new(None),
            mtls_client: std::sync::Mutex::new(None),
        }
    }

    fn builder(root: &Certificate) -> reqwest::ClientBuilder {
        Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root.clone())
            .timeout(REQUEST_TIMEOUT)
    }

    fn pinned(&self) -> Result<Pinned, ApiError> {
        self.pinned
            .read()
            .map_err(|_| ApiError::Tls("pinned root lock poisoned".into()))?
            .clone()
            .ok_or_else(|| ApiError::Tls("no root CA pinned yet".into()))
    }

    /// A client presenting `identity`: the last one built while the certificate is the
    /// same (a renewal brings a new one, and a new client).
    fn mtls(&self, identity: &ClientIdentity) -> Result<Client, ApiError> {
        if let Ok(kept) = self.mtls_client.lock() {
            if let Some((cert, client)) = kept.as_ref() {
                if *cert == identity.cert_pem {
                    return Ok(client.clone());
                }
            }
        }
        let pem_text = format!("{}\n{}", identity.cert_pem, identity.key_pem);
        let id = Identity::from_pem(pem_text.as_bytes())
            .map_err(|e| ApiError::Tls(format!("device credentials: {e}")))?;
        let client = Self::builder(&self.pinned()?.root)
            .identity(id)
            .build()
            .map_err(|e| ApiError::Tls(e.to_string()))?;
        if let Ok(mut kept) = self.mtls_client.lock() {
            *kept = Some((identity.cert_pem.clone(), client.clone()));
        }
        Ok(client)
    }

    async fn post<B: Serialize + Sync, R: DeserializeOwned>(
        &self,
        client: &Client,
        path: &str,
        body: &B,
    ) -> Result<R, ApiError> {
        let bytes = answer(client.post(url(&self.server, path)).json(body)).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol(format!("{path}: {e}")))
    }
}

/// Sends a long-poll `request` that the server holds up to `wait`: the body of a successful
/// answer, `None` for `304 Not Modified`, or the problem.
async fn long_poll(
    request: reqwest::RequestBuilder,
    wait: Duration,
) -> Result<Option<Vec<u8>>, ApiError> {
    let response = request
        .timeout(wait + REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    let bytes = response.bytes().await.map_err(transport)?;
    if !status.is_success() {
        return Err(problem(status, &bytes));
    }
    Ok(Some(bytes.to_vec()))
}

/// Sends `request` and returns the body of a successful answer; any other answer is its
/// problem.
async fn answer(request: reqwest::RequestBuilder) -> Result<Vec<u8>, ApiError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(transport)?;
    if !status.is_success() {
        return Err(problem(status, &bytes));
    }
    Ok(bytes.to_vec())
}

impl HttpApi {
    /// `GET /v1/crl`: the current CRL (DER), unverified (the caller checks its signature).
    pub async fn crl(&self) -> Result<Vec<u8>, ApiError> {
        answer(self.pinned()?.anonymous.get(url(&self.server, "/v1/crl"))).await
    }

    /// `GET /v1/crl?after=N&wait=S`: the CRL after number `known` (DER, unverified), as soon
    /// as the server signs one within `wait`; `None` if `known` is still current.
    pub async fn crl_after(&self, known: u64, wait: Duration) -> Result<Option<Vec<u8>>, ApiError> {
        let path = format!("/v1/crl?after={known}&wait={}", wait.as_secs());
        long_poll(self.pinned()?.anonymous.get(url(&self.server, &path)), wait).await
    }

    /// `GET /v1/policy/bundle` (mTLS): the signed policy bundle (a JWS), unverified (the
    /// caller checks it against the pinned root).
    pub async fn policy_bundle(&self, identity: &ClientIdentity) -> Result<String, ApiError> {
        let bytes = answer(
            self.mtls(identity)?
                .get(url(&self.server, "/v1/policy/bundle")),
        )
        .await?;
        String::from_utf8(bytes)
            .map_err(|_| ApiError::Protocol("/v1/policy/bundle: not UTF-8".into()))
    }

    /// `GET /v1/policy/bundle?after=V&wait=S` (mTLS): the signed bundle (unverified) as
    /// soon as the active version is another than `known`, within `wait`; `None` if `known`
    /// is still the active one.
    pub async fn policy_bundle_after(
        &self,
        identity: &ClientIdentity,
        known: &str,
        wait: Duration,
    ) -> Result<Option<String>, ApiError> {
        let request = self
            .mtls(identity)?
            .get(url(&self.server, "/v1/policy/bundle"))
            .query(&[("after", known), ("wait", &wait.as_secs().to_string())]);
        long_poll(request, wait)
            .await?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| ApiError::Protocol("/v1/policy/bundle: not UTF-8".into()))
            })
            .transpose()
    }

    /// `POST /v1/policy/decisions` (mTLS): hands spooled decisions to the decision log.
    /// `body` is a [`vouch_proto::policy::DecisionUpload`] already encoded as JSON (the
    /// sidecar encodes it off its runtime thread).
    pub async fn upload_decisions(
        &self,
        identity: &ClientIdentity,
        body: Vec<u8>,
    ) -> Result<vouch_proto::policy::DecisionUploadOutcome, ApiError> {
        const PATH: &str = "/v1/policy/decisions";
        let request = self
            .mtls(identity)?
            .post(url(&self.server, PATH))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let bytes = answer(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol(format!("{PATH}: {e}")))
    }

    /// `GET /v1/peers/{device_id}` (mTLS): what the server says of a peer. The answer is
    /// checked by the caller (`messaging::peers::verify_peer_record`) before it is used.
    pub async fn peer(
        &self,
        identity: &ClientIdentity,
        device_id: &str,
    ) -> Result<vouch_proto::peer::PeerRecord, ApiError> {
        if !(1..=64).contains(&device_id.len()) || !device_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ApiError::Protocol(format!(
                "`{}` is not a device id",
                device_id.chars().take(64).collect::<String>()
            )));
        }
        let path = format!("/v1/peers/{device_id}");
        let bytes = answer(self.mtls(identity)?.get(url(&self.server, &path))).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol(format!("{path}: {e}")))
    }
}

impl Api for HttpApi {
    async fn pin_root(&self, ca_sha256: &[u8; 32]) -> Result<String, ApiError> {
        let root_pem = pin_root(&self.server, ca_sha256).await?;
        self.trust_root(&root_pem)?;
        Ok(root_pem)
    }

    fn trust_root(&self, root_pem: &str) -> Result<(), ApiError> {
        let root = Certificate::from_pem(root_pem.as_bytes())
            .map_err(|e| ApiError::Tls(format!("pinned root: {e}")))?;
        let anonymous = Self::builder(&root)
            .build()
            .map_err(|e| ApiError::Tls(e.to_string()))?;
        let mut pinned = self
            .pinned
            .write()
            .map_err(|_| ApiError::Tls("pinned root lock poisoned".into()))?;
        *pinned = Some(Pinned { root, anonymous });
        // A client trusting the old root is not used again.
        if let Ok(mut kept) = self.mtls_client.lock() {
            *kept = None;
        }
        Ok(())
    }

    async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
        self.post(&self.pinned()?.anonymous, "/v1/enroll", req)
            .await
    }

    async fn enroll_tpm(&self, req: &TpmEnrollStart) -> Result<TpmChallenge, ApiError> {
        self.post(&self.pinned()?.anonymous, "/v1/enroll/tpm", req)
            .await
    }

    async fn renew(
        &self,
        identity: &ClientIdentity,
        req: &RenewRequest,
    ) -> Result<EnrollResponse, ApiError> {
        self.post(&self.mtls(identity)?, "/v1/renew", req).await
    }

    async fn attest_challenge(
        &self,
        identity: &ClientIdentity,
    ) -> Result<AttestChallenge, ApiError> {
        self.post(
            &self.mtls(identity)?,
            "/v1/attest/challenge",
            &serde_json::json!({}),
        )
        .await
    }

    async fn attest_quote(
        &self,
        identity: &ClientIdentity,
        req: &QuoteSubmission,
    ) -> Result<AttestOutcome, ApiError> {
        self.post(&self.mtls(identity)?, "/v1/attest/quote", req)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_keep_their_code_and_odd_bodies_get_one() {
        let body = serde_json::json!({"type": "about:blank", "title": "Forbidden", "status": 403,
            "code": ProblemCode::DeviceQuarantined.as_str(), "detail": "x"});
        let e = problem(StatusCode::FORBIDDEN, body.to_string().as_bytes());
        assert_eq!(e.code(), Some(ProblemCode::DeviceQuarantined));
        assert!(!e.is_transient());
        let e = problem(StatusCode::BAD_GATEWAY, b"<html>");
        assert!(matches!(&e, ApiError::Problem { code, .. } if code == "http_502"));
        assert_eq!(e.code(), None);
        assert!(e.is_transient());
        assert!(problem(StatusCode::TOO_MANY_REQUESTS, b"").is_transient());
        assert!(ApiError::Transport("x".into()).is_transient());
        assert!(!ApiError::Protocol("x".into()).is_transient());
    }

    #[test]
    fn urls_join_without_double_slashes() {
        assert_eq!(url("https://h:1/", "/v1/enroll"), "https://h:1/v1/enroll");
        assert_eq!(url("https://h:1", "/v1/enroll"), "https://h:1/v1/enroll");
    }
}
