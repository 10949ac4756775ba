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
use vouch_envelope::{certificate_sha256, Envelope, KeyAgreementKey, SharedSecretCache};
use vouch_policy::model::MessageContext;
use vouch_proto::policy::DecisionSide;
use vouch_proto::ProblemCode;

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
}

/// Most sends in flight at once (half the receiver's replay window).
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

/// Appends `value` as one JSON line to `path` (created 0600) and syncs it to disk.
fn append_line(path: &std::path::Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&line)?;
    file.sync_data()
}

/// A peer directory answer as saved.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPeer {
    record: vouch_proto::peer::PeerRecord,
    fetched_at: i64,
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

    /// Keeps the CRL ([`CRL_FILE`], as the CA signed it) and the peer directory's answers
    /// ([`PEERS_FILE`], see [`Self::save_peers`]) in `state`, and loads what is there now:
    /// each checked again (the CRL's signature, each answer's certificates), so that a
    /// sidecar started while the server cannot be reached works from what it knew.
    pub fn with_cache(self, state: StateDir) -> Self {
        if let Ok(Some(der)) = state.read_bytes(CRL_FILE) {
            let confirmed = std::fs::metadata(state.file(CRL_FILE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(i64::MIN, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MIN));
            match self.install_crl(&der) {
                Ok(n) => {
                    self.crl_confirmed.store(confirmed, Ordering::SeqCst);
                    tracing::info!(crl_number = n, "the saved CRL checks out");
                }
                Err(e) => tracing::warn!(error = %e, "the saved CRL is not used"),
            }
        }
        if let Ok(Some(text)) = state.read(PEERS_FILE) {
            let saved: Vec<SavedPeer> = serde_json::from_str(&text).unwrap_or_default();
            let at = self.now();
            let mut loaded = 0;
            for s in saved {
                if let Ok(mut peer) =
                    verify_peer_record(&self.anchors, &s.record, &s.record.device_id, at)
                {
                    peer.fetched_at = s.fetched_at.min(at);
                    self.peers.insert(peer);
                    loaded += 1;
                }
            }
            tracing::info!(peers = loaded, "saved peer directory answers checked out");
        }
        if let Ok(Some(text)) = state.read(INBOX_FILE) {
            if let Ok(mut inbox) = self.inbox.lock() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match serde_json::from_str::<Waiting>(line) {
                        Ok(w) => inbox.push_back(w),
                        Err(e) => {
                            tracing::warn!(error = %e, "a kept message does not parse: skipped")
                        }
                    }
                }
                if !inbox.is_empty() {
                    tracing::info!(messages = inbox.len(), "messages kept for the workload");
                }
            }
        }
        let _ = self.saved.set(state);
        self
    }

    /// Saves the peer directory's answers cached now (see [`Self::with_cache`]).
    pub fn save_peers(&self) {
        let Some(state) = self.saved.get() else {
            return;
        };
        let saved: Vec<SavedPeer> = self
            .peers
            .all()
            .into_iter()
            .map(|p| SavedPeer {
                record: (*p.record).clone(),
                fetched_at: p.fetched_at,
            })
            .collect();
        match serde_json::to_vec(&saved) {
            Ok(bytes) => {
                if let Err(e) = state.write(PEERS_FILE, &bytes) {
                    tracing::warn!(error = %e, "cannot save the peer directory's answers");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot save the peer directory's answers"),
        }
    }

    /// Marks the CRL in use as confirmed current now (the file's time, at most once a
    /// minute, so that a restart knows).
    fn confirm_crl(&self) {
        let at = self.now();
        let before = self.crl_confirmed.swap(at, Ordering::SeqCst);
        if let Some(state) = self.saved.get() {
            if at.saturating_sub(before) >= 60 {
                let touched = std::fs::File::options()
                    .append(true)
                    .open(state.file(CRL_FILE))
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                if let Err(e) = touched {
                    tracing::debug!(error = %e, "cannot mark the saved CRL as confirmed");
                }
            }
        }
    }

    /// Whether this sidecar may send and take messages now: it has a CRL, confirmed current
    /// within `--max-crl-age`, and before its nextUpdate, and its policy bundle was
    /// confirmed within `--max-policy-age`. The reason if not.
    pub fn trust_current(&self) -> Result<(), String> {
        let at = self.now();
        let crl = self
            .crl
            .read()
            .map_err(|_| "the CRL lock was poisoned".to_owned())?;
        let Some(crl) = crl.as_ref() else {
            return Err("no CRL has been verified yet".into());
        };
        if at >= crl.next_update() {
            return Err(format!(
                "CRL {} is past its nextUpdate and the server has not given a newer one",
                crl.number()
            ));
        }
        let confirmed = self.crl_confirmed.load(Ordering::SeqCst);
        let age = at.saturating_sub(confirmed);
        if u64::try_from(age).map_or(true, |a| a > self.max_crl_age.as_secs()) {
            return Err(format!(
                "CRL {} was last confirmed by the server {}s ago, more than the maximum age of {}s",
                crl.number(),
                age,
                self.max_crl_age.as_secs()
            ));
        }
        let confirmed = self.policy_confirmed.load(Ordering::SeqCst);
        if confirmed != i64::MIN {
            let age = at.saturating_sub(confirmed);
            if u64::try_from(age).map_or(true, |a| a > self.max_policy_age.as_secs()) {
                return Err(format!(
                    "the policy bundle was last confirmed by the server {}s ago, more than the maximum age of {}s",
                    age,
                    self.max_policy_age.as_secs()
                ));
            }
        }
        Ok(())
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

    /// Fetches the current CRL and uses it if its signature checks out.
    pub async fn refresh_crl(&self) -> Result<u64, String> {
        let der = self.api.crl().await.map_err(|e| e.to_string())?;
        self.install_crl(&der)
    }

    /// Follows the CRL for as long as the process runs: long-polls the server for the next
    /// one (`GET /v1/crl?after=N&wait=25`) and uses each as soon as it is signed, retrying
    /// with backoff while the server cannot be reached.
    pub async fn follow_crl(&self) {
        const WAIT: Duration = Duration::from_secs(25);
        let mut delay = Duration::from_secs(1);
        loop {
            let known = self.crl_number().unwrap_or(0);
            match self.api.crl_after(known, WAIT).await {
                Ok(Some(der)) => {
                    delay = Duration::from_secs(1);
                    if let Err(e) = self.install_crl(&der) {
                        tracing::warn!(error = %e, "the server's CRL is not used");
                        tokio::time::sleep(delay).await;
                    }
                }
                Ok(None) => {
                    // The server says the CRL in use is still current.
                    self.confirm_crl();
                    delay = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot follow the CRL");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Verifies `der` as a CRL of this fleet's issuing CA and uses it unless it is older
    /// than the one in use; then forgets what it lists: cached peers (their keys), delivery
    /// connections to them, and their messages not yet read. Returns the number in use.
    pub fn install_crl(&self, der: &[u8]) -> Result<u64, String> {
        let issuing = crate::credentials::certificates(&self.own().identity.cert_pem)
            .into_iter()
            .nth(1)
            .ok_or("the device certificate file has no issuing CA")?;
        let crl = RevocationList::from_der(der, &issuing).map_err(|e| e.to_string())?;
        let number = crl.number();
        {
            let mut current = self
                .crl
                .write()
                .map_err(|_| "the CRL lock was poisoned".to_owned())?;
            let known = current.as_ref().map(RevocationList::number);
            if known.is_some_and(|k| k > number) {
                return Ok(known.unwrap_or(number));
            }
            *current = Some(crl.clone());
            if let Ok(mut kept) = self.crl_der.write() {
                *kept = der.to_vec();
            }
            if known == Some(number) {
                // The same list, fetched again: nothing changed, and it is still current.
                drop(current);
                self.confirm_crl();
                return Ok(number);
            }
        }
        self.crl_confirmed.store(self.now(), Ordering::SeqCst);
        if let Some(state) = self.saved.get() {
            if let Err(e) = state.write(CRL_FILE, der) {
                tracing::warn!(error = %e, "cannot save the CRL");
            }
        }
        // Who is quarantined or released may have changed: ask the directory again.
        self.trust_changes.fetch_add(1, Ordering::SeqCst);
        let dropped = self
            .peers
            .forget_where(|p| crl.lists(&p.device.serial) || crl.lists(&p.key_agreement.serial));
        if let Ok(mut clients) = self.clients.lock() {
            for peer in &dropped {
                clients.remove(&peer.device.spiffe_id);
            }
        }
        let closed = self.live.close_where(|serial| crl.lists(serial));
        let refused = self
            .inbox
            .lock()
            .map(|mut inbox| {
                let before = inbox.len();
                inbox.retain(|w| !crl.lists(&hex::decode(&w.sender_serial).unwrap_or_default()));
                let refused = before - inbox.len();
                if refused > 0 {
                    self.save_inbox(&inbox);
                }
                refused
            })
            .unwrap_or(0);
        tracing::info!(
            crl_number = number,
            peers_dropped = dropped.len(),
            connections_closed = closed,
            queued_messages_refused = refused,
            "CRL in use"
        );
        Ok(number)
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

    /// Decides whether this device may send `data_type` (`size` bytes) to `peer` over
    /// `transport`, and takes a token from any `@rate_limit` of the allowing policies.
    async fn egress(
        &self,
        own: &Own,
        peer: &Peer,
        data_type: &str,
        size: usize,
        transport: &Transport,
    ) -> Result<Vec<String>, MessagingError> {
        self.trust_current().map_err(MessagingError::StaleTrust)?;
        let me = self.peer(&own.device_id).await?;
        let context = MessageContext {
            data_type: data_type.to_owned(),
            protocol: transport.protocol.clone(),
            tls: transport.tls,
            mtls: transport.mtls,
            size: i64::try_from(size).unwrap_or(i64::MAX),
        };
        let to = &peer.device.device_id;
        let verdict = self.decider.decide(
            Party {
                device_id: &own.device_id,
                facts: &me.facts,
            },
            Party {
                device_id: to,
                facts: &peer.facts,
            },
            &context,
        );
        tracing::info!(to = %to, data_type, protocol = %transport.protocol, allowed = verdict.allowed,
            policies = ?verdict.policies, version = %verdict.version, "egress decision");
        self.spool_decision(DecisionSide::Sender, &own.device_id, to, &context, &verdict)
            .map_err(MessagingError::Spool)?;
        if !verdict.allowed {
            return Err(MessagingError::PolicyDenied(verdict));
        }
        self.rates
            .take(
                &verdict.annotations,
                to,
                self.started.elapsed().as_secs_f64(),
            )
            .map_err(|(retry_after, policy)| MessagingError::RateLimited {
                retry_after,
                policy,
            })?;
        Ok(verdict.policies)
    }

    /// Seals `payload` to `peer` (after [`Self::egress`]); the envelope and its `cti`.
    fn seal_to(
        &self,
        own: &Own,
        peer: &Peer,
        data_type: &str,
        payload: &[u8],
    ) -> Result<(Vec<u8>, [u8; 16]), MessagingError> {
        let at = u64::try_from(self.now()).unwrap_or(0);
        // The receiver may not know this device yet: the certificates ride along.
        let envelope = own.outbox.seal(peer, data_type, payload, at, true)?;
        let cti = Envelope::parse(&envelope, usize::MAX)
            .map(|p| *p.header().claims().cti())
            .map_err(SendError::Envelope)?;
        Ok((envelope, cti))
    }

    /// Seals `payload` of `data_type` to device `to` for a workload that carries it over
    /// `protocol` itself: policy decides first. The envelope, its message id and the
    /// allowing policies.
    pub async fn seal(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: &str,
    ) -> Result<(Vec<u8>, String, Vec<String>), MessagingError> {
        let own = self.own();
        let peer = self.peer(to).await?;
        let transport = Transport::carried(protocol);
        let policies = self
            .egress(&own, &peer, data_type, payload.len(), &transport)
            .await?;
        let (envelope, cti) = self.seal_to(&own, &peer, data_type, payload)?;
        self.counters.sent("sealed");
        Ok((envelope, hex::encode(cti), policies))
    }

    /// Seals `payload` of `data_type` to device `to` and sends it: directly (`https`) or
    /// through the broker (`mqtt`), as `protocol` asks or, without it, directly when the
    /// peer takes direct deliveries. Policy decides first, with the protocol in its context.
    pub async fn send(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: Option<&str>,
    ) -> Result<Sent, MessagingError> {
        let result = match self.in_flight.acquire().await {
            Ok(_permit) => self.send_retried(to, data_type, payload, protocol).await,
            Err(_) => Err(MessagingError::NoEndpoint("the sidecar is stopping".into())),
        };
        match &result {
            Ok(sent) => self.counters.sent(sent.via),
            Err(e) => self.counters.refused("sender", e.reason()),
        }
        result
    }

    async fn send_retried(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: Option<&str>,
    ) -> Result<Sent, MessagingError> {
        match self.send_once(to, data_type, payload, protocol).await {
            // The peer renewed since its directory answer was cached: sealed to a key it no
            // longer holds, so refused and not delivered. Ask the directory again, once.
            Err(MessagingError::Delivery(DeliveryError::Refused { detail, .. }))
                if detail.starts_with("decryption_failed") =>
            {
                tracing::info!(to, "the peer's keys changed; asking the directory again");
                self.peers.forget(to);
                self.send_once(to, data_type, payload, protocol).await
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: Option<&str>,
    ) -> Result<Sent, MessagingError> {
        let own = self.own();
        let peer = self.peer(to).await?;
        let https = peer.endpoints.iter().find(|e| e.starts_with("https://"));
        let mqtt = peer.endpoints.iter().find(|e| e.starts_with("mqtt://"));
        let (transport, endpoint) = match (protocol, https, mqtt) {
            (Some("https") | None, Some(url), _) => (Transport::direct(), url.clone()),
            (Some("mqtt") | None, _, Some(url)) => (Transport::mqtt(), url.clone()),
            (Some(p @ ("https" | "mqtt")), _, _) => {
                return Err(MessagingError::NoEndpoint(format!(
                    "the peer takes no `{p}` deliveries"
                )))
            }
            (Some(p), _, _) => {
                return Err(MessagingError::NoEndpoint(format!(
                    "`{}` is not a delivery protocol (`https` or `mqtt`)",
                    p.chars().take(32).collect::<String>()
                )))
            }
            (None, None, None) => {
                return Err(MessagingError::NoEndpoint(
                    "the peer advertises no delivery endpoint".into(),
                ))
            }
        };
        let policies = self
            .egress(&own, &peer, data_type, payload.len(), &transport)
            .await?;
        let (envelope, cti) = self.seal_to(&own, &peer, data_type, payload)?;
        let message_id = hex::encode(cti);
        if transport.protocol == "mqtt" {
            let broker = self.broker.get().ok_or_else(|| {
                MessagingError::NoEndpoint(
                    "the peer takes deliveries through MQTT, and this agent has no --mqtt broker"
                        .into(),
                )
            })?;
            broker
                .publish(&peer.device.device_id, envelope)
                .await
                .map_err(MessagingError::Broker)?;
            tracing::debug!(%endpoint, %message_id, "published");
            return Ok(Sent {
                message_id,
                via: "mqtt",
                receipt: None,
                policies,
            });
        }
        let client = self.client_for(&own, &peer.device.spiffe_id)?;
        let answer = match deliver::deliver_with(&client, &endpoint, envelope).await {
            Ok(answer) => {
                self.exchange_crl(&client, &endpoint, answer.crl_number)
                    .await;
                answer
            }
            Err(e) => {
                if let DeliveryError::Refused { crl_number, .. } = &e {
                    self.exchange_crl(&client, &endpoint, *crl_number).await;
                }
                return Err(e.into());
            }
        };
        let receipt = B64.decode(&answer.receipt).map_err(|_| {
            MessagingError::BadReceipt(ReceiptError::Malformed("not base64".into()))
        })?;
        let checked = receipt::verify(
            &receipt,
            &peer.device.spiffe_id,
            &peer.device.public_key,
            &own.spiffe_id,
            &cti,
        );
        if checked == Err(ReceiptError::BadSignature) {
            // Signed with a key the cached answer does not know (the peer renewed): check it
            // against the directory's current answer (the message is delivered; it is not
            // sent again).
            self.peers.forget(to);
            let current = self.peer(to).await?;
            receipt::verify(
                &receipt,
                &current.device.spiffe_id,
                &current.device.public_key,
                &own.spiffe_id,
                &cti,
            )
            .map_err(MessagingError::BadReceipt)?;
        } else {
            checked.map_err(MessagingError::BadReceipt)?;
        }
        if answer.message_id != message_id {
            return Err(MessagingError::BadReceipt(ReceiptError::Mismatch(
                "about another message",
            )));
        }
        Ok(Sent {
            message_id,
            via: "https",
            receipt: Some(receipt),
            policies,
        })
    }

    /// Evens out CRLs with the peer at `endpoint` that uses CRL `theirs`: fetches its CRL
    /// if newer than this sidecar's, hands it this sidecar's if older. So an island of
    /// sidecars cut off from the server converges on the newest CRL any of them has seen.
    async fn exchange_crl(&self, client: &reqwest::Client, endpoint: &str, theirs: Option<u64>) {
        let Some(theirs) = theirs else { return };
        let mine = self.crl_number();
        if mine.is_none_or(|m| theirs > m) {
            match deliver::fetch_crl(client, endpoint).await {
                Ok(der) => match self.install_crl(&der) {
                    Ok(n) => {
                        tracing::info!(crl_number = n, %endpoint, "took a newer CRL from a peer")
                    }
                    Err(e) => tracing::warn!(error = %e, %endpoint, "a peer's CRL is not used"),
                },
                Err(e) => tracing::debug!(error = %e, %endpoint, "cannot fetch a peer's CRL"),
            }
        } else if mine.is_some_and(|m| theirs < m) {
            let der = self.crl_der.read().map(|d| d.clone()).unwrap_or_default();
            match deliver::offer_crl(client, endpoint, der).await {
                Ok(()) => {
                    tracing::info!(crl_number = ?mine, %endpoint, "handed a peer the newer CRL")
                }
                Err(e) => tracing::debug!(error = %e, %endpoint, "a peer did not take the CRL"),
            }
        }
    }

    /// Peers' open delivery connections (see [`deliver::serve_tracked`]): closed when a new
    /// CRL lists them.
    pub fn live_connections(&self) -> Arc<deliver::LiveConnections> {
        Arc::clone(&self.live)
    }

    /// What the delivery listener shares with peers: the CRL in use, and taking a newer one.
    pub fn relay(self: &Arc<Self>) -> deliver::CrlRelay {
        let (numbered, current, offered) = (Arc::clone(self), Arc::clone(self), Arc::clone(self));
        deliver::CrlRelay {
            number: Arc::new(move || numbered.crl_number()),
            current: Arc::new(move || {
                let number = current.crl_number()?;
                let der = current.crl_der.read().ok()?.clone();
                (!der.is_empty()).then_some((number, der))
            }),
            offer: Arc::new(move |der| {
                let before = offered.crl_number();
                let number = offered.install_crl(der)?;
                if before.is_none_or(|b| number > b) {
                    tracing::info!(crl_number = number, "a peer handed over a newer CRL");
                }
                Ok(number)
            }),
        }
    }

    /// The delivery client for the peer `spiffe_id`, made once (bounded: when full, all are
    /// dropped and made again as needed).
    fn client_for(&self, own: &Own, spiffe_id: &str) -> Result<reqwest::Client, DeliveryError> {
        if let Some(client) = self
            .clients
            .lock()
            .ok()
            .and_then(|c| c.get(spiffe_id).cloned())
        {
            return Ok(client);
        }
        let tls = deliver::client_config(
            &own.identity.cert_pem,
            &own.identity.key_pem,
            &self.anchors,
            spiffe_id,
        )?;
        let client = deliver::client(tls)?;
        if let Ok(mut clients) = self.clients.lock() {
            if clients.len() >= 1024 {
                clients.clear();
            }
            clients.insert(spiffe_id.to_owned(), client.clone());
        }
        Ok(client)
    }

    /// Who an envelope claims to be from, if its certificate chains to this fleet: used only
    /// to fetch the sender's facts before the checks (which verify everything again).
    fn claimed_sender(&self, bytes: &[u8], at: i64) -> Option<VerifiedDevice> {
        let parsed = Envelope::parse(bytes, self.limits.max_len).ok()?;
        let x5t = *parsed.header().sender_certificate_sha256();
        let der = match parsed.certificates().first() {
            Some(der) => der.clone(),
            None => self.known.lock().ok()?.get(&x5t).cloned()?,
        };
        self.anchors.verify_device(&der, at).ok()
    }

    /// Checks an incoming envelope that arrived by `transport` and queues it for the
    /// workload; the message id and a receipt signed for the sender, or the refusal.
    pub async fn accept(&self, bytes: &[u8], transport: &Transport) -> Result<Accepted, Refused> {
        let result = self.accept_counted(bytes, transport).await;
        self.count_arrival(&result, transport);
        result
    }

    /// Counts a message that arrived by `transport`: received, or refused for its reason.
    pub fn count_arrival<T>(&self, result: &Result<T, Refused>, transport: &Transport) {
        match result {
            Ok(_) => self.counters.received(&transport.protocol),
            Err((reason, _)) => self.counters.refused("receiver", reason),
        }
    }

    async fn accept_counted(
        &self,
        bytes: &[u8],
        transport: &Transport,
    ) -> Result<Accepted, Refused> {
        if self.inbox.lock().map(|q| q.len()).unwrap_or(MAX_INBOX) >= MAX_INBOX {
            return Err((
                "inbox_full",
                "the workload has not read its messages".into(),
            ));
        }
        let (delivered, accepted) = self.open(bytes, transport).await?;
        let waiting = Waiting::from(delivered);
        {
            let mut inbox = self
                .inbox
                .lock()
                .map_err(|_| ("lock_poisoned", "a lock was poisoned".to_owned()))?;
            // Kept on disk before the receipt leaves: a receipted message survives a restart.
            if let Some(state) = self.saved.get() {
                append_line(&state.file(INBOX_FILE), &waiting).map_err(|e| {
                    tracing::error!(error = %e, "cannot keep a message for the workload");
                    ("storage", format!("the message cannot be kept: {e}"))
                })?;
            }
            inbox.push_back(waiting);
        }
        self.arrived.notify_waiters();
        Ok(accepted)
    }

    /// Checks an incoming envelope that arrived by `transport` (every check, ingress policy
    /// included, and the replay window advanced) and returns the message and a receipt
    /// signed for the sender, or the refusal.
    pub async fn open(
        &self,
        bytes: &[u8],
        transport: &Transport,
    ) -> Result<(Delivered, Accepted), Refused> {
        let refused = |reason: &'static str, detail: &str| (reason, detail.to_owned());
        self.trust_current()
            .map_err(|why| refused("stale_trust", &why))?;
        let own = self.own();
        let at = self.now();
        // The facts policy needs, fetched before the (synchronous) checks.
        let (sender_peer, me_peer) = match self.claimed_sender(bytes, at) {
            Some(claimed) => (
                self.peer(&claimed.device_id).await.ok(),
                self.peer(&own.device_id).await.ok(),
            ),
            None => (None, None),
        };
        let policy = |sender: &VerifiedDevice, data_type: &str, size: usize| {
            let (Some(from), Some(me)) = (&sender_peer, &me_peer) else {
                return Err(
                    "the peer directory gave no standing for the sender or this device: refused"
                        .into(),
                );
            };
            if from.device.device_id != sender.device_id {
                return Err("the sender is not the device whose standing was fetched".into());
            }
            let context = MessageContext {
                data_type: data_type.to_owned(),
                protocol: transport.protocol.clone(),
                tls: transport.tls,
                mtls: transport.mtls,
                size: i64::try_from(size).unwrap_or(i64::MAX),
            };
            let verdict = self.decider.decide(
                Party {
                    device_id: &sender.device_id,
                    facts: &from.facts,
                },
                Party {
                    device_id: &own.device_id,
                    facts: &me.facts,
                },
                &context,
            );
            tracing::info!(from = %sender.device_id, data_type, protocol = %transport.protocol,
                allowed = verdict.allowed, policies = ?verdict.policies, version = %verdict.version,
                "ingress decision");
            self.spool_decision(
                DecisionSide::Receiver,
                &sender.device_id,
                &own.device_id,
                &context,
                &verdict,
            )
            .map_err(|e| e.to_string())?;
            if verdict.allowed {
                Ok(())
            } else {
                Err(verdict.describe())
            }
        };
        let delivered = {
            let crl = self
                .crl
                .read()
                .map_err(|_| refused("lock_poisoned", "a lock was poisoned"))?;
            let known = |hash: &[u8; 32]| self.known.lock().ok().and_then(|k| k.get(hash).cloned());
            let receiver = Receiver {
                anchors: &self.anchors,
                crl: crl.as_ref(),
                me: &own.spiffe_id,
                my_key: &own.my_key,
                cache: &self.cache,
                known: &known,
                limits: self.limits,
            };
            let mut replay = self
                .replay
                .lock()
                .map_err(|_| refused("lock_poisoned", "a lock was poisoned"))?;
            receiver.receive(bytes, at, &mut replay, &policy)
        };
        let delivered = delivered.map_err(|e| {
            tracing::warn!(reason = e.reason(), error = %e, protocol = %transport.protocol, "message refused");
            (e.reason(), e.to_string())
        })?;
        tracing::info!(from = %delivered.sender.device_id, data_type = %delivered.data_type,
            message_id = %delivered.message_id, "message accepted");
        let cti = hex::decode(&delivered.message_id).unwrap_or_default();
        let receipt = receipt::sign(
            &own.signer,
            &own.spiffe_id,
            &delivered.sender.spiffe_id,
            &cti,
            at,
        )
        .map_err(|e| refused("receipt", &e.to_string()))?;
        let accepted = Accepted {
            message_id: delivered.message_id.clone(),
            receipt,
        };
        Ok((delivered, accepted))
    }

    /// The receiving side of direct delivery ([`deliver::serve`]): each envelope through
    /// [`Self::accept`], answered with a receipt.
    pub fn inbound(self: &Arc<Self>) -> Inbound {
        let messenger = Arc::clone(self);
        Arc::new(move |bytes| {
            let messenger = Arc::clone(&messenger);
            Box::pin(async move {
                let accepted = messenger.accept(&bytes, &Transport::direct()).await?;
                Ok(Receipt {
                    message_id: accepted.message_id,
                    receipt: B64.encode(accepted.receipt),
                    crl_number: None,
                })
            })
        })
    }

    /// The messages that arrived, oldest first, waiting up to `wait` for one if none has.
    pub async fn take_messages(&self, wait: Duration) -> Vec<Waiting> {
        let notified = self.arrived.notified();
        let drained = self.drain();
        if !drained.is_empty() || wait.is_zero() {
            return drained;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        self.drain()
    }

    fn drain(&self) -> Vec<Waiting> {
        let Ok(mut inbox) = self.inbox.lock() else {
            return Vec::new();
        };
        let drained: Vec<Waiting> = inbox.drain(..).collect();
        if !drained.is_empty() {
            // Everything was read: the kept inbox empties (a truncation, not a rewrite; a
            // crash just before it hands the messages over again, never loses one).
            if let Some(state) = self.saved.get() {
                let emptied = std::fs::OpenOptions::new()
                    .write(true)
                    .open(state.file(INBOX_FILE))
                    .and_then(|f| f.set_len(0));
                if let Err(e) = emptied {
                    tracing::error!(error = %e, "cannot empty the kept inbox");
                }
            }
        }
        drained
    }

    /// Rewrites the kept inbox as `inbox` (called with its lock held).
    fn save_inbox(&self, inbox: &VecDeque<Waiting>) {
        let Some(state) = self.saved.get() else {
            return;
        };
        let mut text = Vec::new();
        for w in inbox {
            if let Ok(line) = serde_json::to_vec(w) {
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
        }
        if let Err(e) = state.write(INBOX_FILE, &text) {
            tracing::error!(error = %e, "cannot rewrite the kept inbox");
        }
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
