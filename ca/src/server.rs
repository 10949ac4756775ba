//! The HTTPS listener: rustls with optional client certificates, serving the axum router.
//!
//! Client certificates are optional at the TLS layer (operators and new devices have none);
//! when one is sent it must be signed by this server's issuing CA (the only trust anchor for
//! clients: a root may be shared with other CAs, as after `vouch ca import` under a corporate
//! root, and a sibling intermediate's certificate must not pass). The leaf is read once per
//! connection into a [`PeerCertificate`] (serial, SPIFFE ID in this trust domain, expiry) and
//! handed to the handlers. Endpoints that need a device decide for themselves.

use crate::api::auth::PeerCertificate;
use crate::ids::TrustDomain;
use crate::metrics::HandshakeCounter;
use crate::pki::authority::Authority;
use crate::pki::profile::issue_server_certificate;
use crate::pki::PkiError;
use crate::tickets::TicketKeys;
use crate::verified_chains::{CachingClientVerifier, VERIFIED_CHAINS_CAPACITY};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a client may take to send request headers (HTTP/1; an HTTP/2 connection that
/// sends no complete request is idle, see [`ConnectionLimits::idle`]).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an HTTP/2 connection is pinged while a request is open (a long-poll), and how
/// long the answer may take: a peer that vanished is noticed.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 64;

/// What one client connection may hold: every stage has a bound, so a client that stops
/// talking gives its connection back.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections served at once; beyond it the server stops accepting.
    pub max_connections: usize,
    /// How long a client may take to finish the TLS handshake, from the accept.
    pub handshake: Duration,
    /// How long a connection may stay open with no request in flight (HTTP/1 keep-alive and
    /// HTTP/2 alike), from the handshake or the end of its last request.
    pub idle: Duration,
    /// How long a request body may take to arrive in full, from the request's headers.
    pub request_body: Duration,
}

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Issuing the server certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Builds the server's TLS configuration. The server certificate is issued by the issuing CA
/// at start-up for `hostnames`; client certificates are verified against the issuing CA.
/// Sessions resume with `tickets`, which every replica of the data directory opens: a
/// returning device skips the full handshake and its chain's verification (its certificate's
/// standing is still checked on every request).
/// A chain that verified is remembered until one of its certificates expires, so a device's
/// full handshakes verify its chain once per certificate ([`CachingClientVerifier`]).
pub(crate) fn tls_config(
    ca: &Authority,
    hostnames: &[String],
    now: OffsetDateTime,
    tickets: Arc<TicketKeys>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(vouch_proto::tls::crypto_provider());
    let (cert, key) = issue_server_certificate(ca, hostnames, now, time::Duration::days(30))?;
    let chain = vec![
        CertificateDer::from(cert.der),
        CertificateDer::from(ca.issuing_der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let verifier = Arc::new(CachingClientVerifier::new(
        client_verifier(ca, provider.clone())?,
        VERIFIED_CHAINS_CAPACITY,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.ticketer = tickets;
    Ok(Arc::new(config))
}

/// The verifier of client certificates: optional, and when sent, chaining to this server's
/// issuing CA (its only trust anchor for clients) for client authentication.
pub(crate) fn client_verifier(
    ca: &Authority,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.issuing_der().to_vec()))?;
    Ok(
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()?,
    )
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, within `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    trust_domain: TrustDomain,
    router: Router,
    limits: ConnectionLimits,
    handshakes: HandshakeCounter,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(tls);
    // One permit per connection, taken before `accept`: at the cap the server accepts nothing
    // more (back-pressure through the kernel's backlog) until a connection ends.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let trust_domain = trust_domain.clone();
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            let served = serve_connection(
                acceptor,
                tcp,
                peer,
                &trust_domain,
                router,
                limits,
                &handshakes,
            );
            if let Err(e) = served.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    trust_domain: &TrustDomain,
    router: Router,
    limits: ConnectionLimits,
    handshakes: &HandshakeCounter,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await??;
    handshakes.count(tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
    let peer_cert = PeerCertificate::from_chain(tls.get_ref().1.peer_certificates(), trust_domain);
    let activity = Activity::new();
    let seen = activity.clone();
    let service = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer_cert.clone());
        let in_flight = seen.begin();
        let req =
            req.map(|body| axum::body::Body::new(BodyDeadline::new(body, limits.request_body)));
        let answer = router.clone().oneshot(req);
        async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => served?,
        () = activity.idle_for(limits.idle) => {
            tracing::debug!(%peer, "closing an idle connection");
            connection.as_mut().graceful_shutdown();
            // Nothing is in flight: the shutdown completes at once (bounded all the same).
            let _ = tokio::time::timeout(HEADER_TIMEOUT, connection).await;
        }
    }
    tracing::trace!(%peer, "connection closed");
    Ok(())
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Clone)]
struct Activity(Arc<std::sync::Mutex<(usize, tokio::time::Instant)>>);

/// Held while a request is in flight; its drop marks the connection active now.
struct InFlight(Activity);

impl Activity {
    fn new() -> Self {
        Self(Arc::new(std::sync::Mutex::new((
            0,
            tokio::time::Instant::now(),
        ))))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (usize, tokio::time::Instant)> {
        // The lock is never held across a panic point; a poisoned lock still has its data.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin(&self) -> InFlight {
        self.state().0 += 1;
        InFlight(self.clone())
    }

    /// Completes once the connection has had nothing in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let (in_flight, since) = *self.state();
            let deadline = since + idle;
            if in_flight == 0 && tokio::time::Instant::now() >= deadline {
                return;
            }
            // Busy: look again one idle period on (a request that ends sooner moves `since`).
            tokio::time::sleep_until(if in_flight == 0 {
                deadline
            } else {
                tokio::time::Instant::now() + idle
            })
            .await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.0 = state.0.saturating_sub(1);
        state.1 = tokio::time::Instant::now();
    }
}

/// A request body that must arrive in full by a deadline set when its headers arrived: a
/// client that trickles a body (or stops sending it) gets an error, not the connection.
struct BodyDeadline {
    body: hyper::body::Incoming,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BodyDeadline {
    fn new(body: hyper::body::Incoming, within: Duration) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the server's time limit")]
pub(crate) struct BodyTooSlow;

impl hyper::body::Body for BodyDeadline {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if self.body.is_end_stream() {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
        }
        std::pin::Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as Self::Error)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
