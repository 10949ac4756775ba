//! One device's messaging, put together: sending (peer directory, egress policy, seal,
//! deliver directly over mutual TLS or through an MQTT broker) and receiving (the receiver's
//! checks with ingress policy, then a bounded inbox the workload reads, and a signed receipt
//! for the sender). Policy is a required argument: there is no default that lets everything
//! through, and without a verified policy bundle every message is refused.

use super::deliver::{self, DeliveryError, Inbound, Receipt, Refused};
use super::metrics::{Counters, Gauges};
use super::mqtt::Broker;
use super::peers::{verify_peer_record, Peer, PeerCache};
use super::policy::{Decider, Party, RateLimits, Verdict};
use super::receipt::{self, ReceiptError};
use super::receive::{Delivered, Limits, Receiver};
use super::replay::ReplayGuard;
use super::revocation::RevocationList;
use super::send::{Credentials, Outbox, SendError};
use super::spool::{self, Spool, SpoolError};
use super::trust::{TrustAnchors, VerifiedDevice};
use crate::client::{ApiError, HttpApi};
use crate::lifecycle::ClientIdentity;
use crate::schedule::{Clock, SystemClock};
use crate::state::StateDir;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use vouch_envelope::{certificate_sha256, KeyAgreementKey, ParsedEnvelope, SharedSecretCache};
use vouch_policy::model::MessageContext;
use vouch_proto::policy::DecisionSide;
use vouch_proto::ProblemCode;

mod crl;
mod incoming;
mod outgoing;
mod saved;

/// Most messages waiting for the workload; beyond it new ones are refused (back-pressure on
/// senders), never dropped silently.
pub const MAX_INBOX: usize = 10_000;
/// How long the peer directory's facts about a device (zone, status, trust) are used before
/// they are asked again, seconds: a quarantined or revoked device is refused within this.
pub const FACTS_TTL_SECS: i64 = 30;
/// How long facts are still used while the directory cannot be reached, seconds.
pub const MAX_FACTS_AGE_SECS: i64 = 15 * 60;

/// How a message travels, as policy sees it (`context.protocol`, `tls`, `mtls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// `https`, `mqtt`, or what a workload says it carries an envelope over.
    pub protocol: String,
    /// Whether the hop is TLS.
    pub tls: bool,
    /// Whether the hop is mutual TLS with device certificates.
    pub mtls: bool,
}

impl Transport {
    /// Direct delivery: HTTPS with device certificates on both sides.
    pub fn direct() -> Self {
        Self {
            protocol: "https".into(),
            tls: true,
            mtls: true,
        }
    }

    /// Through an MQTT broker over plain TCP.
    pub fn mqtt() -> Self {
        Self::carried("mqtt")
    }

    /// Carried by the workload itself over `protocol`: the sidecar vouches for no channel.
    pub fn carried(protocol: &str) -> Self {
        Self {
            protocol: protocol.to_owned(),
            tls: false,
            mtls: false,
        }
    }
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// The peer directory did not answer, or refused.
    #[error("peer directory: {0}")]
    Directory(ApiError),
    /// The directory's answer did not check out.
    #[error("the peer's certificates are not trusted: {0}")]
    UntrustedPeer(String),
    /// The peer takes no deliveries the way asked (or at all).
    #[error("{0}")]
    NoEndpoint(String),
    /// Policy refused it at the sender.
    #[error("{}", .0.describe())]
    PolicyDenied(Verdict),
    /// A `@rate_limit` of the allowing policy is used up for this peer.
    #[error("rate limit of policy `{policy}` reached; retry in {:.1}s", retry_after.as_secs_f64())]
    RateLimited {
        /// When a token is back.
        retry_after: Duration,
        /// The policy.
        policy: String,
    },
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SendError),
    /// Delivery failed or was refused.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// The peer's receipt does not check out.
    #[error("the peer's receipt: {0}")]
    BadReceipt(ReceiptError),
    /// The broker did not take the message.
    #[error("the MQTT broker: {0}")]
    Broker(String),
    /// This sidecar's knowledge of who is trusted is too old: everything is refused until
    /// the server (or a peer) brings a current CRL.
    #[error("refusing every message: {0}")]
    StaleTrust(String),
    /// The decision could not be recorded, so it is not acted on.
    #[error(transparent)]
    Spool(SpoolError),
}

impl MessagingError {
    /// A short fixed name of the kind of refusal, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Directory(_) => "peer_directory",
            Self::UntrustedPeer(_) => "untrusted_peer",
            Self::NoEndpoint(_) => "no_endpoint",
            Self::PolicyDenied(_) => ProblemCode::PolicyDenied.as_str(),
            Self::RateLimited { .. } => ProblemCode::RateLimited.as_str(),
            Self::Seal(_) => "seal",
            Self::Delivery(DeliveryError::Refused { .. }) => "peer_refused",
            Self::Delivery(_) => ProblemCode::PeerUnreachable.as_str(),
            Self::BadReceipt(_) => "bad_receipt",
            Self::Broker(_) => "broker",
            Self::StaleTrust(_) => "stale_trust",
            Self::Spool(_) => "decision_spool",
        }
    }
}

/// A message that left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Its id (`cti`, hex).
    pub message_id: String,
    /// How it left: `https` (delivered, with a receipt) or `mqtt` (published to the broker).
    pub via: &'static str,
    /// The peer's signed receipt (COSE), checked; only for direct delivery.
    pub receipt: Option<Vec<u8>>,
    /// The policies that allowed it.
    pub policies: Vec<String>,
    /// The version of the policy set that decided.
    pub policy_version: String,
}

/// A message accepted here: its id and the receipt signed for the sender.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The message id (hex).
    pub message_id: String,
    /// The signed receipt.
    pub receipt: Vec<u8>,
}

/// This device's own credentials, replaced as a whole at every renewal.
struct Own {
    identity: ClientIdentity,
    spiffe_id: String,
    device_id: String,
    outbox: Outbox,
    my_key: KeyAgreementKey,
    signer: EcdsaKeyPair,
}

impl Own {
    fn new(anchors: &TrustAnchors, credentials: &Credentials<'_>) -> Result<Self, SendError> {
        let bad = |e: &dyn std::fmt::Display| SendError::Credentials(e.to_string());
        let private = |pem_text: &str| {
            pem::parse_many(pem_text)
                .ok()
                .and_then(|b| b.into_iter().find(|p| p.tag() == "PRIVATE KEY"))
                .map(pem::Pem::into_contents)
        };
        let ka_der = private(credentials.ka_key_pem)
            .ok_or_else(|| SendError::Credentials("no key-agreement key".into()))?;
        let key_der = private(credentials.key_pem)
            .ok_or_else(|| SendError::Credentials("no device key".into()))?;
        let rng = ring::rand::SystemRandom::new();
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der, &rng)
            .map_err(|e| bad(&e))?;
        let cert_der = crate::credentials::certificates(credentials.cert_pem)
            .into_iter()
            .next()
            .ok_or_else(|| SendError::Credentials("no device certificate".into()))?;
        let me = anchors
            .verify_device(&cert_der, time::OffsetDateTime::now_utc().unix_timestamp())
            .map_err(|e| bad(&e))?;
        if me.spiffe_id != credentials.spiffe_id {
            return Err(SendError::Credentials(
                "the device certificate names another SPIFFE ID".into(),
            ));
        }
        Ok(Self {
            identity: ClientIdentity {
                cert_pem: credentials.cert_pem.to_owned(),
                key_pem: credentials.key_pem.to_owned(),
            },
            spiffe_id: me.spiffe_id,
            device_id: me.device_id,
            outbox: Outbox::new(credentials)?,
            my_key: KeyAgreementKey::from_pkcs8_der(&ka_der)?,
            signer,
        })
    }
}

/// This device's messaging.
pub struct Messenger {
    api: HttpApi,
    anchors: TrustAnchors,
    own: RwLock<Arc<Own>>,
    peers: PeerCache,
    cache: SharedSecretCache,
    crl: RwLock<Option<RevocationList>>,
    /// The CRL in use as the CA signed it, to hand to peers that are behind.
    crl_der: RwLock<Vec<u8>>,
    replay: Mutex<ReplayGuard>,
    known: Mutex<HashMap<[u8; 32], Vec<u8>>>,
    inbox: Mutex<VecDeque<Waiting>>,
    /// The inbox's file (locked after `inbox`, when both are).
    kept: Mutex<saved::KeptInbox>,
    arrived: Notify,
    /// Delivery clients by peer SPIFFE ID: one TLS set-up and one kept connection per peer,
    /// not per message.
    clients: Mutex<HashMap<String, reqwest::Client>>,
    decider: Arc<dyn Decider>,
    rates: RateLimits,
    started: Instant,
    broker: OnceLock<Broker>,
    limits: Limits,
    /// New CRLs installed: cached facts from before the latest are asked again.
    trust_changes: AtomicU64,
    /// Peers' open delivery connections to this sidecar.
    live: Arc<deliver::LiveConnections>,
    /// Where the CRL and the peer directory's answers are kept across restarts.
    saved: OnceLock<StateDir>,
    /// When the server last confirmed the CRL in use as current (Unix seconds).
    crl_confirmed: AtomicI64,
    /// Past this age of the CRL's last confirmation, everything is refused.
    max_crl_age: Duration,
    clock: Arc<dyn Clock>,
    /// Where decisions wait for upload to the server's decision log; none: not recorded.
    spool: OnceLock<Arc<Spool>>,
    /// When the server last confirmed the policy bundle in use (Unix seconds); `i64::MIN`
    /// until it has (a sidecar without a verified bundle refuses everything anyway).
    policy_confirmed: AtomicI64,
    /// Past this age of the policy bundle's last confirmation, everything is refused.
    max_policy_age: Duration,
    /// What `/metrics` counts.
    counters: Counters,
    /// Sends sealed and not yet answered. Sequence numbers are given at sealing; with more
    /// than the receiver's replay window in flight to one peer, a message overtaken by a
    /// window's worth of later ones would be refused as a replay. At most half a window is
    /// in flight, so none is.
    in_flight: tokio::sync::Semaphore,
    /// Direct deliveries on their way, kept inside each receiver's replay window.
    window: super::window::SendWindow,
}

/// Most sends in flight at once (with [`super::window::ROOM`], within the receiver's replay
/// window).
pub const MAX_SENDS_IN_FLIGHT: usize = (super::replay::WINDOW / 2) as usize;

/// The saved CRL in the state directory.
pub const CRL_FILE: &str = "crl.der";
/// The saved peer directory answers in the state directory.
pub const PEERS_FILE: &str = "peers.json";

/// Messages received and receipted, not yet read by the workload, one JSON line each.
pub const INBOX_FILE: &str = "inbox.jsonl";

/// A message waiting for the workload (in memory, and in [`INBOX_FILE`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Waiting {
    /// The message as the workload reads it.
    #[serde(flatten)]
    pub message: vouch_proto::workload::ArrivedMessage,
    /// The serial of the sender's certificate, hex (a new CRL listing it drops the message).
    pub sender_serial: String,
}

impl From<Delivered> for Waiting {
    fn from(d: Delivered) -> Self {
        Self {
            message: vouch_proto::workload::ArrivedMessage {
                from: d.sender.device_id,
                from_spiffe_id: d.sender.spiffe_id,
                data_type: d.data_type,
                payload: B64.encode(d.payload),
                sent_at: d.sent_at,
                message_id: d.message_id,
            },
            sender_serial: hex::encode(d.sender.serial),
        }
    }
}

/// Default [`Messenger::with_max_crl_age`]: four hours.
pub const DEFAULT_MAX_CRL_AGE: Duration = Duration::from_secs(4 * 3600);
/// Default [`Messenger::with_max_policy_age`]: four hours.
pub const DEFAULT_MAX_POLICY_AGE: Duration = Duration::from_secs(4 * 3600);

impl Messenger {
    /// Messaging for the device with `credentials` (its device certificate PEM followed by
    /// the issuing CA, as presented over mTLS), talking to the server through `api` (its
    /// root pinned), with `replay` windows, deciding with `decider` at both ends.
    pub fn new(
        api: HttpApi,
        anchors: TrustAnchors,
        credentials: &Credentials<'_>,
        replay: ReplayGuard,
        decider: Arc<dyn Decider>,
    ) -> Result<Self, SendError> {
        let own = Own::new(&anchors, credentials)?;
        Ok(Self {
            api,
            anchors,
            own: RwLock::new(Arc::new(own)),
            peers: PeerCache::default(),
            cache: SharedSecretCache::new(1024),
            crl: RwLock::new(None),
            crl_der: RwLock::new(Vec::new()),
            replay: Mutex::new(replay),
            known: Mutex::new(HashMap::new()),
            inbox: Mutex::new(VecDeque::new()),
            kept: Mutex::default(),
            arrived: Notify::new(),
            clients: Mutex::new(HashMap::new()),
            decider,
            rates: RateLimits::default(),
            started: Instant::now(),
            broker: OnceLock::new(),
            limits: Limits::default(),
            trust_changes: AtomicU64::new(0),
            live: Arc::default(),
            saved: OnceLock::new(),
            crl_confirmed: AtomicI64::new(i64::MIN),
            max_crl_age: DEFAULT_MAX_CRL_AGE,
            clock: Arc::new(SystemClock),
            spool: OnceLock::new(),
            policy_confirmed: AtomicI64::new(i64::MIN),
            max_policy_age: DEFAULT_MAX_POLICY_AGE,
            counters: Counters::default(),
            in_flight: tokio::sync::Semaphore::new(MAX_SENDS_IN_FLIGHT),
            window: super::window::SendWindow::default(),
        })
    }

    /// Reads the time from `clock` (tests move it).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Refuses everything once the CRL in use was last confirmed current by the server more
    /// than `age` ago (and, whatever `age`, past the CRL's nextUpdate).
    #[must_use]
    pub fn with_max_crl_age(mut self, age: Duration) -> Self {
        self.max_crl_age = age;
        self
    }

    fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    /// Refuses everything once the policy bundle in use was last confirmed by the server
    /// more than `age` ago (see [`Self::confirm_policy`]).
    pub fn with_max_policy_age(mut self, age: Duration) -> Self {
        self.max_policy_age = age;
        self
    }

    /// The server has just given the policy bundle in use (or a newer one), verified; `at`
    /// (Unix seconds) instead of now for a saved bundle (its file's time).
    pub fn confirm_policy(&self, at: Option<i64>) {
        self.policy_confirmed
            .store(at.unwrap_or_else(|| self.now()), Ordering::SeqCst);
    }

    /// What `/metrics` shows: the counters and the state now.
    pub fn metrics(&self) -> String {
        let at = self.now();
        let age = |confirmed: i64| (confirmed != i64::MIN).then(|| at.saturating_sub(confirmed));
        let has_crl = self.crl_number().is_some();
        let gauges = Gauges {
            crl_number: self.crl_number(),
            crl_age: if has_crl {
                age(self.crl_confirmed.load(Ordering::SeqCst))
            } else {
                None
            },
            policy_age: age(self.policy_confirmed.load(Ordering::SeqCst)),
            refusing: self.trust_current().is_err(),
            spool_depth: self.spool.get().map_or(0, |s| s.depth()),
            spool_dropped: self.spool.get().map_or(0, |s| s.dropped()),
            inbox_depth: self.inbox.lock().map_or(0, |q| q.len()),
        };
        self.counters.render(&gauges)
    }

    /// Records every decision in `spool` before it takes effect; a decision the spool does
    /// not take refuses its message.
    pub fn with_spool(self, spool: Arc<Spool>) -> Self {
        let _ = self.spool.set(spool);
        self
    }

    /// The decision spool, if decisions are recorded.
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.get()
    }

    /// Spools `verdict` on `from` sending to `to`, decided at `side`.
    fn spool_decision(
        &self,
        side: DecisionSide,
        from: &str,
        to: &str,
        context: &MessageContext,
        verdict: &Verdict,
    ) -> Result<(), SpoolError> {
        let Some(spool) = self.spool.get() else {
            return Ok(());
        };
        spool.record(&spool::decision(
            side,
            from,
            to,
            context,
            verdict,
            self.now(),
        )?)
    }

    /// Uses renewed `credentials` from now on (same device; new keys and certificates).
    pub fn renewed(&self, credentials: &Credentials<'_>) -> Result<(), SendError> {
        let own = Own::new(&self.anchors, credentials)?;
        if let Ok(mut current) = self.own.write() {
            *current = Arc::new(own);
        }
        if let Ok(mut clients) = self.clients.lock() {
            clients.clear();
        }
        Ok(())
    }

    /// Publishes through `broker` from now on (set once).
    pub fn set_broker(&self, broker: Broker) {
        let _ = self.broker.set(broker);
    }

    fn own(&self) -> Arc<Own> {
        match self.own.read() {
            Ok(own) => own.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The checked peer `device_id` with fresh facts: from the cache when asked within
    /// [`FACTS_TTL_SECS`] and since the last new CRL (a quarantine, a release), else from the
    /// directory (falling back to a cached answer up to [`MAX_FACTS_AGE_SECS`] old while the
    /// directory cannot be reached).
    async fn peer(&self, device_id: &str) -> Result<Peer, MessagingError> {
        let at = self.now();
        let generation = self.trust_changes.load(Ordering::SeqCst);
        let cached = self.peers.get(device_id, at);
        if let Some(peer) = cached
            .as_ref()
            .filter(|p| at - p.fetched_at < FACTS_TTL_SECS && p.generation == generation)
        {
            return Ok(peer.clone());
        }
        let record = match self.api.peer(&self.own().identity, device_id).await {
            Ok(record) => record,
            Err(e) if e.is_transient() => {
                return cached
                    .filter(|p| at - p.fetched_at < MAX_FACTS_AGE_SECS)
                    .inspect(|_| {
                        tracing::warn!(error = %e, device_id, "peer directory unreachable; using its last answer");
                    })
                    .ok_or(MessagingError::Directory(e));
            }
            Err(e) => {
                self.peers.forget(device_id);
                return Err(MessagingError::Directory(e));
            }
        };
        let mut peer = verify_peer_record(&self.anchors, &record, device_id, at)
            .map_err(|e| MessagingError::UntrustedPeer(e.to_string()))?;
        peer.generation = generation;
        self.peers.insert(peer.clone());
        Ok(peer)
    }

    /// The policy version in use, if a bundle has been verified.
    pub fn policy_version(&self) -> Option<String> {
        self.decider.version()
    }

    /// The number of the CRL in use, if one has been verified.
    pub fn crl_number(&self) -> Option<u64> {
        self.crl
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(RevocationList::number))
    }

    /// This device's SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        self.own().spiffe_id.clone()
    }

    /// This device's id.
    pub fn device_id(&self) -> String {
        self.own().device_id.clone()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        self.anchors.trust_domain()
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
