//! One device's messaging, put together: sending (peer directory, seal, deliver over mutual
//! TLS) and receiving (the receiver's checks, then a bounded inbox the workload reads). The
//! ingress policy is a required argument: there is no default that lets everything in.

use super::deliver::{self, DeliveryError, Receipt};
use super::peers::{verify_peer_record, Peer, PeerCache};
use super::receive::{Delivered, Limits, Receiver};
use super::replay::ReplayGuard;
use super::revocation::RevocationList;
use super::send::{Credentials, Outbox, SendError};
use super::trust::{TrustAnchors, VerifiedDevice};
use crate::client::{ApiError, HttpApi};
use crate::lifecycle::ClientIdentity;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use vouch_envelope::{certificate_sha256, KeyAgreementKey, SharedSecretCache};

/// Most messages waiting for the workload; beyond it new ones are refused (back-pressure on
/// senders), never dropped silently.
pub const MAX_INBOX: usize = 10_000;

/// Decides whether `sender` may send `data_type` to this device.
pub type IngressPolicy = Box<dyn Fn(&VerifiedDevice, &str) -> Result<(), String> + Send + Sync>;

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// The peer directory did not answer, or refused.
    #[error("peer directory: {0}")]
    Directory(ApiError),
    /// The directory's answer did not check out.
    #[error("the peer's certificates are not trusted: {0}")]
    UntrustedPeer(String),
    /// The peer advertises no `https://` endpoint.
    #[error("the peer advertises no direct delivery endpoint")]
    NoEndpoint,
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SendError),
    /// Delivery failed or was refused.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// This device's messaging.
pub struct Messenger {
    api: HttpApi,
    identity: ClientIdentity,
    anchors: TrustAnchors,
    cert_pem: String,
    key_pem: String,
    spiffe_id: String,
    outbox: Outbox,
    peers: PeerCache,
    my_key: KeyAgreementKey,
    cache: SharedSecretCache,
    crl: RwLock<Option<RevocationList>>,
    replay: Mutex<ReplayGuard>,
    known: Mutex<HashMap<[u8; 32], Vec<u8>>>,
    inbox: Mutex<VecDeque<Delivered>>,
    arrived: Notify,
    /// Delivery clients by peer SPIFFE ID: one TLS set-up and one kept connection per peer,
    /// not per message.
    clients: Mutex<HashMap<String, reqwest::Client>>,
    policy: IngressPolicy,
    limits: Limits,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Messenger {
    /// Messaging for the device with `credentials` (its device certificate PEM followed by
    /// the issuing CA, as presented over mTLS), talking to the server through `api` (its
    /// root pinned), with `replay` windows and the ingress `policy`.
    pub fn new(
        api: HttpApi,
        anchors: TrustAnchors,
        credentials: &Credentials<'_>,
        replay: ReplayGuard,
        policy: IngressPolicy,
    ) -> Result<Self, SendError> {
        let ka_der = pem::parse_many(credentials.ka_key_pem)
            .ok()
            .and_then(|b| b.into_iter().find(|p| p.tag() == "PRIVATE KEY"))
            .map(pem::Pem::into_contents)
            .ok_or_else(|| SendError::Credentials("no key-agreement key".into()))?;
        let my_key = KeyAgreementKey::from_pkcs8_der(&ka_der)?;
        Ok(Self {
            api,
            identity: ClientIdentity {
                cert_pem: credentials.cert_pem.to_owned(),
                key_pem: credentials.key_pem.to_owned(),
            },
            anchors,
            cert_pem: credentials.cert_pem.to_owned(),
            key_pem: credentials.key_pem.to_owned(),
            spiffe_id: credentials.spiffe_id.to_owned(),
            outbox: Outbox::new(credentials)?,
            peers: PeerCache::default(),
            my_key,
            cache: SharedSecretCache::new(1024),
            crl: RwLock::new(None),
            replay: Mutex::new(replay),
            known: Mutex::new(HashMap::new()),
            inbox: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            clients: Mutex::new(HashMap::new()),
            policy,
            limits: Limits::default(),
        })
    }

    /// Fetches the current CRL and uses it if its signature checks out.
    pub async fn refresh_crl(&self) -> Result<u64, String> {
        let der = self.api.crl().await.map_err(|e| e.to_string())?;
        let issuing = self.anchors_issuing_ca()?;
        let crl = RevocationList::from_der(&der, &issuing).map_err(|e| e.to_string())?;
        let number = crl.number();
        if let Ok(mut current) = self.crl.write() {
            *current = Some(crl);
        }
        Ok(number)
    }

    fn anchors_issuing_ca(&self) -> Result<Vec<u8>, String> {
        crate::credentials::certificates(&self.cert_pem)
            .into_iter()
            .nth(1)
            .ok_or_else(|| "the device certificate file has no issuing CA".into())
    }

    /// The checked peer `device_id`, from the cache or the directory.
    async fn peer(&self, device_id: &str) -> Result<Peer, MessagingError> {
        if let Some(peer) = self.peers.get(device_id, now()) {
            return Ok(peer);
        }
        let record = self
            .api
            .peer(&self.identity, device_id)
            .await
            .map_err(MessagingError::Directory)?;
        let peer = verify_peer_record(&self.anchors, &record, device_id, now())
            .map_err(|e| MessagingError::UntrustedPeer(e.to_string()))?;
        self.peers.insert(peer.clone());
        Ok(peer)
    }

    /// Seals `payload` of `data_type` to device `to` and delivers it directly.
    pub async fn send(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
    ) -> Result<Receipt, MessagingError> {
        let peer = self.peer(to).await?;
        let endpoint = peer
            .endpoints
            .iter()
            .find(|e| e.starts_with("https://"))
            .ok_or(MessagingError::NoEndpoint)?
            .clone();
        let envelope = self.outbox.seal(
            &peer,
            data_type,
            payload,
            u64::try_from(now()).unwrap_or(0),
            true,
        )?;
        let client = self.client_for(&peer.device.spiffe_id)?;
        Ok(deliver::deliver_with(&client, &endpoint, envelope).await?)
    }

    /// The delivery client for the peer `spiffe_id`, made once (bounded: when full, all are
    /// dropped and made again as needed).
    fn client_for(&self, spiffe_id: &str) -> Result<reqwest::Client, DeliveryError> {
        if let Some(client) = self
            .clients
            .lock()
            .ok()
            .and_then(|c| c.get(spiffe_id).cloned())
        {
            return Ok(client);
        }
        let tls = deliver::client_config(&self.cert_pem, &self.key_pem, &self.anchors, spiffe_id)?;
        let client = deliver::client(tls)?;
        if let Ok(mut clients) = self.clients.lock() {
            if clients.len() >= 1024 {
                clients.clear();
            }
            clients.insert(spiffe_id.to_owned(), client.clone());
        }
        Ok(client)
    }

    /// Checks an incoming envelope and queues it for the workload; the message id, or the
    /// refusal's reason and description.
    pub fn accept(&self, bytes: &[u8]) -> Result<String, (&'static str, String)> {
        let refused = |reason: &'static str, detail: &str| (reason, detail.to_owned());
        if self.inbox.lock().map(|q| q.len()).unwrap_or(MAX_INBOX) >= MAX_INBOX {
            return Err(refused(
                "inbox_full",
                "the workload has not read its messages",
            ));
        }
        let crl = self
            .crl
            .read()
            .map_err(|_| refused("lock_poisoned", "a lock was poisoned"))?;
        let known = |hash: &[u8; 32]| self.known.lock().ok().and_then(|k| k.get(hash).cloned());
        let receiver = Receiver {
            anchors: &self.anchors,
            crl: crl.as_ref(),
            me: &self.spiffe_id,
            my_key: &self.my_key,
            cache: &self.cache,
            known: &known,
            limits: self.limits,
        };
        let mut replay = self
            .replay
            .lock()
            .map_err(|_| refused("lock_poisoned", "a lock was poisoned"))?;
        let delivered = receiver
            .receive(bytes, now(), &mut replay, &*self.policy)
            .map_err(|e| (e.reason(), e.to_string()))?;
        drop(replay);
        tracing::info!(from = %delivered.sender.device_id, data_type = %delivered.data_type,
            message_id = %delivered.message_id, "message accepted");
        let id = delivered.message_id.clone();
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.push_back(delivered);
        }
        self.arrived.notify_waiters();
        Ok(id)
    }

    /// The messages that arrived, oldest first, waiting up to `wait` for one if none has.
    pub async fn take_messages(&self, wait: Duration) -> Vec<Delivered> {
        let notified = self.arrived.notified();
        let drained = self.drain();
        if !drained.is_empty() || wait.is_zero() {
            return drained;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        self.drain()
    }

    fn drain(&self) -> Vec<Delivered> {
        self.inbox
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// This device's SPIFFE ID.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// Remembers a peer's certificate (DER) by its SHA-256, for envelopes sent without it
    /// (bounded: when full, the oldest knowledge is dropped wholesale).
    pub fn remember_certificate(&self, der: Vec<u8>) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= 10_000 {
                known.clear();
            }
            known.insert(certificate_sha256(&der), der);
        }
    }
}
