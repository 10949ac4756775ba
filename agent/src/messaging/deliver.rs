//! Direct delivery between sidecars: `POST /v1/deliver` (`application/cose`) over mutual TLS
//! with device certificates on both sides (HTTP/2 or HTTP/1.1). The receiving sidecar's TLS
//! accepts only clients whose certificate chains to the pinned root; the sender's TLS accepts
//! only the peer it meant (its SPIFFE ID, through this fleet's issuing CA). The envelope is
//! checked again, end to end, by [`super::receive`]: TLS protects the hop, the envelope the
//! message.

use super::trust::TrustAnchors;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vouch_proto::{Problem, ProblemCode};

/// Media type of an envelope.
pub const CONTENT_TYPE: &str = "application/cose";

/// How long a TLS handshake or a request's headers may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most delivery connections held at once; further peers wait in the listen backlog.
pub const MAX_DELIVERY_CONNECTIONS: usize = 1024;

/// Why TLS for delivery cannot be set up, or a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// This device's credentials do not load.
    #[error("this device's credentials do not load: {0}")]
    Credentials(String),
    /// TLS set-up failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer could not be reached.
    #[error("the peer cannot be reached: {0}")]
    Unreachable(String),
    /// The peer refused the message (its problem `code` and `detail`).
    #[error("the peer refused the message: {code}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's code.
        code: String,
        /// Why.
        detail: String,
        /// The number of the CRL the peer uses ([`CRL_NUMBER_HEADER`]).
        crl_number: Option<u64>,
    },
}

/// What a receiving sidecar answers for a delivered message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The message id (`cti`, hex) of the message accepted.
    pub message_id: String,
    /// The receiver's signed receipt (`super::receipt`), base64.
    pub receipt: String,
    /// The number of the CRL the receiver uses (from [`CRL_NUMBER_HEADER`], not the body).
    #[serde(skip)]
    pub crl_number: Option<u64>,
}

/// The header every delivery answer carries: the number of the CRL the receiver uses, so
/// that a sender that is behind fetches the newer one from it (`GET /v1/crl`), and a sender
/// that is ahead hands its own over (`PUT /v1/crl`). CRLs are signed by the CA: any peer may
/// carry them, and each is verified before it is used.
pub const CRL_NUMBER_HEADER: &str = "vouch-crl-number";

/// Media type of a CRL.
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";

/// The CRL in use: its number and DER, as received.
pub type CurrentCrl = Arc<dyn Fn() -> Option<(u64, Vec<u8>)> + Send + Sync>;

/// Takes a CRL a peer offers (DER): used if it verifies and is newer; the number in use.
pub type OfferedCrl = Arc<dyn Fn(&[u8]) -> Result<u64, String> + Send + Sync>;

/// The number of the CRL in use.
pub type CrlNumber = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// A sidecar's CRL as its delivery listener shares it with peers.
#[derive(Clone)]
pub struct CrlRelay {
    /// The number of the CRL in use (on every answer: cheap).
    pub number: CrlNumber,
    /// The CRL in use.
    pub current: CurrentCrl,
    /// Takes a CRL a peer offers.
    pub offer: OfferedCrl,
}

#[derive(Clone)]
struct Listening {
    inbound: Inbound,
    relay: Option<CrlRelay>,
}

/// The refusal of a delivered envelope: a stable reason and a description.
pub type Refused = (&'static str, String);

/// What the receiver's checks answer for a delivered envelope.
pub type InboundFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Receipt, Refused>> + Send>>;

/// Hands a delivered envelope to the receiver's checks.
pub type Inbound = Arc<dyn Fn(Bytes) -> InboundFuture + Send + Sync>;

fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), DeliveryError> {
    let certs: Vec<CertificateDer<'static>> = crate::credentials::certificates(cert_pem)
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if certs.is_empty() {
        return Err(DeliveryError::Credentials("no device certificate".into()));
    }
    let key = pem::parse_many(key_pem)
        .ok()
        .and_then(|b| b.into_iter().find(|p| p.tag() == "PRIVATE KEY"))
        .map(|p| PrivateKeyDer::Pkcs8(p.into_contents().into()))
        .ok_or_else(|| DeliveryError::Credentials("no PKCS#8 device key".into()))?;
    Ok((certs, key))
}

/// This device's certificate (and chain) as the delivery listener presents it, replaced at
/// every renewal without restarting the listener.
#[derive(Debug)]
pub struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl CurrentCertificate {
    fn certified(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, DeliveryError> {
        let (chain, key) = chain_and_key(cert_pem, key_pem)?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| DeliveryError::Credentials(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(chain, key)))
    }

    /// The certificate chain `cert_pem` with its key `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, DeliveryError> {
        Ok(Arc::new(Self(RwLock::new(Self::certified(
            cert_pem, key_pem,
        )?))))
    }

    /// Presents `cert_pem` with `key_pem` from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), DeliveryError> {
        let certified = Self::certified(cert_pem, key_pem)?;
        if let Ok(mut current) = self.0.write() {
            *current = certified;
        }
        Ok(())
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|c| Arc::clone(&c))
    }
}

/// The receiving side's TLS: this device's certificate (and chain), client certificates
/// required and chained to `root` (DER).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    root: &[u8],
) -> Result<Arc<ServerConfig>, DeliveryError> {
    server_config_with(CurrentCertificate::new(cert_pem, key_pem)?, root)
}

/// [`server_config`] presenting `current`, which may be replaced later.
pub fn server_config_with(
    current: Arc<CurrentCertificate>,
    root: &[u8],
) -> Result<Arc<ServerConfig>, DeliveryError> {
    let tls = |e: &dyn std::fmt::Display| DeliveryError::Tls(e.to_string());
    let provider = Arc::new(vouch_proto::tls::crypto_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .map_err(|e| tls(&e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(current);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Checks the receiving peer's certificate: through this fleet's issuing CA to the pinned
/// root, and the SPIFFE ID the sender meant (device certificates name no host).
#[derive(Debug)]
struct PeerVerifier {
    anchors: TrustAnchors,
    expected: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let at = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let device = self
            .anchors
            .verify_device(end_entity.as_ref(), at)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if device.spiffe_id != self.expected {
            return Err(rustls::Error::General(format!(
                "the peer is `{}`, not `{}`",
                device.spiffe_id, self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The sending side's TLS to the peer `expected` (its SPIFFE ID): this device's certificate
/// as the client identity.
pub fn client_config(
    cert_pem: &str,
    key_pem: &str,
    anchors: &TrustAnchors,
    expected: &str,
) -> Result<ClientConfig, DeliveryError> {
    let provider = Arc::new(vouch_proto::tls::crypto_provider());
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    let verifier = Arc::new(PeerVerifier {
        anchors: anchors.clone(),
        expected: expected.to_owned(),
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DeliveryError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| DeliveryError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTP client for deliveries with `tls` (see [`client_config`]). It keeps its
/// connection to the peer open between messages (HTTP/2 where negotiated): keep one per peer.
pub fn client(tls: ClientConfig) -> Result<reqwest::Client, DeliveryError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| DeliveryError::Tls(e.to_string()))
}

/// Posts `envelope` to `endpoint` (`https://HOST:PORT`) over a new client with `tls`,
/// returning the peer's receipt.
pub async fn deliver(
    endpoint: &str,
    envelope: Vec<u8>,
    tls: ClientConfig,
) -> Result<Receipt, DeliveryError> {
    deliver_with(&client(tls)?, endpoint, envelope).await
}

/// Posts `envelope` to `endpoint` with `client`, returning the peer's receipt.
pub async fn deliver_with(
    client: &reqwest::Client,
    endpoint: &str,
    envelope: Vec<u8>,
) -> Result<Receipt, DeliveryError> {
    let url = format!("{}/v1/deliver", endpoint.trim_end_matches('/'));
    let response = client
        .post(url)
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .body(envelope)
        .send()
        .await
        .map_err(|e| DeliveryError::Unreachable(e.to_string()))?;
    let status = response.status();
    let crl_number = response
        .headers()
        .get(CRL_NUMBER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = response
        .bytes()
        .await
        .map_err(|e| DeliveryError::Unreachable(e.to_string()))?;
    if status.is_success() {
        let mut receipt: Receipt = serde_json::from_slice(&bytes)
            .map_err(|e| DeliveryError::Unreachable(format!("not a receipt: {e}")))?;
        receipt.crl_number = crl_number;
        return Ok(receipt);
    }
    let problem: Option<Problem> = serde_json::from_slice(&bytes).ok();
    Err(DeliveryError::Refused {
        status: status.as_u16(),
        code: problem
            .as_ref()
            .map_or_else(|| format!("http_{}", status.as_u16()), |p| p.code.clone()),
        detail: problem.map(|p| p.detail).unwrap_or_default(),
        crl_number,
    })
}

/// `GET /v1/crl` of the peer at `endpoint`: its CRL (DER, unverified).
pub async fn fetch_crl(client: &reqwest::Client, endpoint: &str) -> Result<Vec<u8>, DeliveryError> {
    let url = format!("{}/v1/crl", endpoint.trim_end_matches('/'));
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| DeliveryError::Unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(DeliveryError::Unreachable(format!(
            "the peer has no CRL to share ({})",
            response.status()
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| DeliveryError::Unreachable(e.to_string()))?;
    if bytes.len() > super::revocation::MAX_CRL_BYTES {
        return Err(DeliveryError::Unreachable(
            "the peer's CRL is too large".into(),
        ));
    }
    Ok(bytes.to_vec())
}

/// `PUT /v1/crl` of the peer at `endpoint`: offers it `der`.
pub async fn offer_crl(
    client: &reqwest::Client,
    endpoint: &str,
    der: Vec<u8>,
) -> Result<(), DeliveryError> {
    let url = format!("{}/v1/crl", endpoint.trim_end_matches('/'));
    let response = client
        .put(url)
        .header(header::CONTENT_TYPE, CRL_CONTENT_TYPE)
        .body(der)
        .send()
        .await
        .map_err(|e| DeliveryError::Unreachable(e.to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Unreachable(format!(
            "the peer did not take the CRL ({})",
            response.status()
        )))
    }
}

/// A problem document answer (`application/problem+json`) with `code`'s status.
pub(crate) fn problem(code: ProblemCode, detail: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        code: code.as_str().to_owned(),
        detail: detail.into(),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        Json(body),
    )
        .into_response()
}

/// Adds [`CRL_NUMBER_HEADER`] to `response`.
fn with_crl_number(mut response: Response, relay: Option<&CrlRelay>) -> Response {
    if let Some(number) = relay.and_then(|r| (r.number)()) {
        if let Ok(value) = axum::http::HeaderValue::from_str(&number.to_string()) {
            response.headers_mut().insert(CRL_NUMBER_HEADER, value);
        }
    }
    response
}

async fn deliver_handler(
    State(listening): State<Listening>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = deliver_answer(&listening.inbound, &headers, body).await;
    with_crl_number(answer, listening.relay.as_ref())
}

/// `GET /v1/crl`: the CRL this sidecar uses, as the CA signed it.
async fn crl_handler(State(listening): State<Listening>) -> Response {
    match listening.relay.as_ref().and_then(|r| (r.current)()) {
        Some((_, der)) => with_crl_number(
            ([(header::CONTENT_TYPE, CRL_CONTENT_TYPE)], der).into_response(),
            listening.relay.as_ref(),
        ),
        None => problem(ProblemCode::NotFound, "this sidecar has no CRL yet"),
    }
}

/// `PUT /v1/crl`: a peer offers a CRL; used if the CA signed it and it is newer.
async fn offer_handler(
    State(listening): State<Listening>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(relay) = listening.relay.as_ref() else {
        return problem(ProblemCode::NotFound, "this sidecar takes no CRLs");
    };
    let is_crl = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(CRL_CONTENT_TYPE));
    if !is_crl {
        return problem(
            ProblemCode::UnsupportedMediaType,
            format!("a CRL is `{CRL_CONTENT_TYPE}`"),
        );
    }
    match (relay.offer)(&body) {
        Ok(_) => with_crl_number(StatusCode::NO_CONTENT.into_response(), Some(relay)),
        Err(e) => problem(
            ProblemCode::InvalidBody,
            format!("the CRL is not taken: {e}"),
        ),
    }
}

async fn deliver_answer(inbound: &Inbound, headers: &HeaderMap, body: Bytes) -> Response {
    let cose = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(CONTENT_TYPE));
    if !cose {
        return problem(
            ProblemCode::UnsupportedMediaType,
            format!("a delivery is `{CONTENT_TYPE}`"),
        );
    }
    match inbound(body).await {
        Ok(receipt) => (StatusCode::OK, Json(receipt)).into_response(),
        Err((reason, detail)) => {
            problem(ProblemCode::MessageRefused, format!("{reason}: {detail}"))
        }
    }
}

/// The delivery API: `POST /v1/deliver` (`application/cose`, at most `max_len` bytes), each
/// envelope handed to `inbound`.
pub fn router(inbound: Inbound, max_len: usize) -> Router {
    router_with(inbound, None, max_len)
}

/// [`router`], and with `relay`, `GET /v1/crl` and `PUT /v1/crl` for peers to exchange the
/// newest CRL either has (signed by the CA, checked before use).
pub fn router_with(inbound: Inbound, relay: Option<CrlRelay>, max_len: usize) -> Router {
    Router::new()
        .route(
            "/v1/deliver",
            post(deliver_handler).layer(DefaultBodyLimit::max(max_len)),
        )
        .route(
            "/v1/crl",
            axum::routing::get(crl_handler)
                .put(offer_handler)
                .layer(DefaultBodyLimit::max(super::revocation::MAX_CRL_BYTES)),
        )
        .with_state(Listening { inbound, relay })
}

/// Serves deliveries on `listener` until `shutdown`: each envelope (at most `max_len`
/// bytes) goes to `inbound`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    inbound: Inbound,
    max_len: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_router(listener, tls, router(inbound, max_len), shutdown).await;
}

/// The delivery connections open now, by the serial of the client certificate each peer
/// presented, so that a peer that is revoked or put on hold is cut off at once.
#[derive(Debug, Default)]
pub struct LiveConnections {
    open: std::sync::Mutex<Vec<(Vec<u8>, tokio::task::AbortHandle)>>,
}

impl LiveConnections {
    fn add(&self, serial: Vec<u8>, handle: tokio::task::AbortHandle) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|(_, h)| !h.is_finished());
            open.push((serial, handle));
        }
    }

    /// Closes every connection whose peer certificate serial `listed` says; how many.
    pub fn close_where(&self, listed: impl Fn(&[u8]) -> bool) -> usize {
        let Ok(mut open) = self.open.lock() else {
            return 0;
        };
        let before = open.len();
        open.retain(|(serial, handle)| {
            if listed(serial) && !handle.is_finished() {
                handle.abort();
                false
            } else {
                !handle.is_finished()
            }
        });
        before.saturating_sub(open.len())
    }
}

/// The serial (as encoded) of the client certificate `tls` was opened with.
fn peer_serial(tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Option<Vec<u8>> {
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.raw_serial().to_vec())
}

/// Serves `router` (see [`router_with`]) over mutual TLS on `listener` until `shutdown`.
pub async fn serve_router(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_tracked(listener, tls, router, Arc::default(), shutdown).await;
}

/// [`serve_router`], keeping each open connection in `live` by its peer's serial.
pub async fn serve_tracked(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    live: Arc<LiveConnections>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_DELIVERY_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        // A free slot first, then accept: at the cap, connections wait in the backlog.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small writes (a handshake flight, a receipt) leave at once rather than wait for
        // the peer's delayed ACK (Nagle's algorithm): tens of milliseconds otherwise.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let (acceptor, router, live) = (acceptor.clone(), router.clone(), live.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                tracing::debug!(%peer, "delivery handshake failed");
                return;
            };
            let serial = peer_serial(&tls).unwrap_or_default();
            let service = TowerToHyperService::new(router);
            let connection = tokio::spawn(async move {
                let mut builder = Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT);
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, error = %e, "delivery connection ended with an error");
                }
            });
            live.add(serial, connection.abort_handle());
            let _ = connection.await;
        });
    }
}
