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
use crate::pki::authority::Authority;
use crate::pki::profile::issue_server_certificate;
use crate::pki::PkiError;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(crate) fn tls_config(
    ca: &Authority,
    hostnames: &[String],
    now: OffsetDateTime,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = issue_server_certificate(ca, hostnames, now, time::Duration::days(30))?;
    let chain = vec![
        CertificateDer::from(cert.der),
        CertificateDer::from(ca.issuing_der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.issuing_der().to_vec()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, at most
/// `max_connections` connections at once.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    trust_domain: TrustDomain,
    router: Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(tls);
    // One permit per connection, taken before `accept`: at the cap the server accepts nothing
    // more (back-pressure through the kernel's backlog) until a connection ends.
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
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
        tokio::spawn(async move {
            if let Err(e) = serve_connection(acceptor, tcp, peer, &trust_domain, router).await {
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
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await??;
    let peer_cert = PeerCertificate::from_chain(tls.get_ref().1.peer_certificates(), trust_domain);
    let service = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer_cert.clone());
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
        .await?;
    tracing::trace!(%peer, "connection closed");
    Ok(())
}
