//! The sidecar as `vouch-agent run` starts it, once the device has an identity: messaging
//! ([`Messenger`]) with the device's credentials (replaced at every renewal), the workload's
//! local API on a Unix socket (and, if asked, a loopback port), the delivery listener for
//! direct deliveries (`--listen`), the MQTT broker connection (`--mqtt`), the CRL followed by
//! long-poll (each new one in use as soon as it is signed), and the CRL and the signed policy
//! bundle fetched at start and every `--refresh` after. Until a CRL and a policy bundle have
//! been verified, every message is refused.

use super::deliver::{self, CurrentCertificate};
use super::node::Messenger;
use super::policy::{BundlePolicy, Decider, Loaded};
use super::replay::ReplayGuard;
use super::send::Credentials;
use super::spool::{self, Spool, WhenFull};
use super::trust::TrustAnchors;
use super::{mqtt, workload};
use crate::client::HttpApi;
use crate::lifecycle::{AgentError, Api, Settings};
use crate::state::{Enrolled, StateDir};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The replay windows' file in the state directory.
pub const REPLAY_FILE: &str = "replay.json";
/// The workload socket's file name in the state directory (the default socket).
pub const SOCKET_FILE: &str = "agent.sock";
/// Default time between CRL and policy bundle fetches.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);

/// How the sidecar is reached and what it fetches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarSettings {
    /// Address of the delivery listener (mutual TLS), if this device takes direct deliveries.
    pub listen: Option<SocketAddr>,
    /// The workload socket; default `<state-dir>/agent.sock`.
    pub socket: Option<PathBuf>,
    /// A loopback port for the workload API as well (requests need the
    /// `X-Vouch-Workload: 1` header).
    pub workload_port: Option<u16>,
    /// The MQTT broker (`mqtt://HOST:PORT`).
    pub mqtt: Option<String>,
    /// Time between CRL and policy bundle fetches; default [`DEFAULT_REFRESH`].
    pub refresh: Option<Duration>,
    /// Past this age of the CRL's last confirmation by the server, every message is refused;
    /// default [`super::node::DEFAULT_MAX_CRL_AGE`].
    pub max_crl_age: Option<Duration>,
    /// Past this age of the policy bundle's last confirmation by the server, every message
    /// is refused; default [`super::node::DEFAULT_MAX_POLICY_AGE`].
    pub max_policy_age: Option<Duration>,
    /// Most decisions waiting for upload; default [`spool::DEFAULT_MAX_SPOOLED`].
    pub spool_max: Option<usize>,
    /// What a full decision spool does.
    pub when_spool_full: WhenFull,
}

fn sidecar_error(what: &str) -> impl FnOnce(String) -> AgentError + '_ {
    move |e| AgentError::Unsupported(format!("sidecar: {what}: {e}"))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// What the messaging needs of an identity: the device's credentials and the key-agreement
/// key and certificate.
fn credentials(enrolled: &Enrolled) -> Option<Credentials<'_>> {
    let ka = enrolled.key_agreement.as_ref()?;
    Some(Credentials {
        spiffe_id: &enrolled.identity.spiffe_id,
        key_pem: &enrolled.key_pem,
        cert_pem: &enrolled.cert_pem,
        ka_key_pem: &ka.key_pem,
        ka_cert_pem: &ka.cert_pem,
    })
}

/// This fleet's trust anchors from an identity: the pinned root, the issuing CA that signed
/// the device certificate, and the trust domain of its SPIFFE ID.
fn anchors(enrolled: &Enrolled) -> Result<TrustAnchors, String> {
    let root = crate::credentials::certificates(&enrolled.ca_pem)
        .into_iter()
        .next()
        .ok_or("the pinned root does not load")?;
    let issuing = crate::credentials::certificates(&enrolled.cert_pem)
        .into_iter()
        .nth(1)
        .ok_or("the device certificate file has no issuing CA")?;
    let chain_pem = pem::encode(&pem::Pem::new("CERTIFICATE", issuing));
    let trust_domain = enrolled
        .identity
        .spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .ok_or("the SPIFFE ID names no trust domain")?;
    TrustAnchors::new(&chain_pem, &root, trust_domain).map_err(|e| e.to_string())
}

/// The saved policy bundle in the state directory, as the server signed it.
pub const POLICY_FILE: &str = "policy-bundle.jws";

/// Uses the saved policy bundle if it still verifies (for a start without the server), as
/// confirmed when it was saved.
fn load_saved_policy(
    messenger: &Messenger,
    state: &StateDir,
    policy: &BundlePolicy,
    enrolled: &Enrolled,
    trust_domain: &str,
) {
    let Ok(Some(jws)) = state.read(POLICY_FILE) else {
        return;
    };
    let root = crate::credentials::certificates(&enrolled.ca_pem)
        .into_iter()
        .next()
        .unwrap_or_default();
    match Loaded::verify(&jws, &root, trust_domain, now()) {
        Ok(loaded) => {
            let version = loaded.version().to_owned();
            policy.install(loaded);
            let saved_at = std::fs::metadata(state.file(POLICY_FILE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(i64::MIN + 1, |d| i64::try_from(d.as_secs()).unwrap_or(0));
            messenger.confirm_policy(Some(saved_at));
            tracing::info!(%version, "the saved policy bundle checks out");
        }
        Err(e) => tracing::warn!(error = %e, "the saved policy bundle is not used"),
    }
}

/// Fetches and verifies the CRL and the policy bundle once (keeping a new bundle in the
/// state directory); logs what failed.
async fn refresh(
    messenger: &Messenger,
    api: &HttpApi,
    policy: &BundlePolicy,
    enrolled: &Enrolled,
    state: &StateDir,
) {
    if let Err(e) = messenger.refresh_crl().await {
        tracing::warn!(error = %e, "cannot refresh the CRL");
    }
    let identity = crate::lifecycle::ClientIdentity::from(enrolled);
    let root = crate::credentials::certificates(&enrolled.ca_pem)
        .into_iter()
        .next()
        .unwrap_or_default();
    match api.policy_bundle(&identity).await {
        Ok(jws) => {
            take_bundle(messenger, policy, state, &root, &jws);
        }
        Err(e) => tracing::warn!(error = %e, "cannot fetch the policy bundle"),
    }
}

/// Verifies `jws` from the server against `root` and uses it (unless older than the one in
/// use), keeping it in the state directory; either way the server has confirmed the
/// version it names as current. Whether it is in use now.
fn take_bundle(
    messenger: &Messenger,
    policy: &BundlePolicy,
    state: &StateDir,
    root: &[u8],
    jws: &str,
) -> bool {
    let loaded = match Loaded::verify(jws, root, messenger.trust_domain(), now()) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(error = %e, "the policy bundle does not verify: not used");
            return false;
        }
    };
    let version = loaded.version().to_owned();
    let same = policy.version().as_deref() == Some(version.as_str());
    if !same && !policy.install(loaded) {
        return false; // older than the one in use
    }
    messenger.confirm_policy(None);
    if !same {
        tracing::info!(%version, "policy bundle verified and in use");
    }
    // Saved each time: the file's time is when the server last confirmed it.
    if let Err(e) = state.write(POLICY_FILE, jws.as_bytes()) {
        tracing::warn!(error = %e, "cannot save the policy bundle");
    }
    true
}

/// Follows the policy bundle by long-poll: a new version is in use as soon as the server
/// swaps it in, and every answer (a `304` too) confirms the version in use as current.
async fn follow_policy(
    messenger: Arc<Messenger>,
    policy: Arc<BundlePolicy>,
    state: StateDir,
    server: String,
    identities: watch::Receiver<Option<Enrolled>>,
) {
    const WAIT: Duration = Duration::from_secs(25);
    let mut backoff = Duration::from_secs(1);
    let api = HttpApi::new(&server);
    let mut trusted = String::new();
    loop {
        let Some(enrolled) = identities.borrow().clone() else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        if enrolled.ca_pem != trusted {
            if let Err(e) = api.trust_root(&enrolled.ca_pem) {
                tracing::error!(error = %e, "the policy bundle is not followed: the pinned root does not load");
                return;
            }
            trusted.clone_from(&enrolled.ca_pem);
        }
        let root = crate::credentials::certificates(&enrolled.ca_pem)
            .into_iter()
            .next()
            .unwrap_or_default();
        let identity = crate::lifecycle::ClientIdentity::from(&enrolled);
        let known = policy.version().unwrap_or_default();
        match api.policy_bundle_after(&identity, &known, WAIT).await {
            // In use: ask again at once, for the next one.
            Ok(Some(jws)) if take_bundle(&messenger, &policy, &state, &root, &jws) => {
                backoff = Duration::from_secs(1);
            }
            // A bundle that does not verify (or is older) comes back at once when asked
            // again: wait, as after an error, rather than ask in a tight loop.
            Ok(Some(_)) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Ok(None) => {
                messenger.confirm_policy(None);
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::debug!(error = %e, "the policy bundle long-poll failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A batch of spooled decisions ready to upload: its encoded body (`None` when the batch
/// held only damaged lines) and where it ends in the spool.
struct Upload {
    body: Option<Vec<u8>>,
    end: u64,
}

/// Syncs the spool and encodes its oldest waiting decisions for upload; `None` when nothing
/// waits. Blocks on the disk: run it on the blocking pool.
fn next_upload(spool: &Spool) -> std::io::Result<Option<Upload>> {
    if let Err(e) = spool.sync() {
        tracing::warn!(error = %e, "cannot sync the decision spool");
    }
    let Some(batch) = spool.batch(vouch_proto::policy::MAX_UPLOADED_DECISIONS)? else {
        return Ok(None);
    };
    let body = if batch.decisions.is_empty() {
        None
    } else {
        let upload = vouch_proto::policy::DecisionUpload {
            decisions: batch.decisions,
        };
        Some(serde_json::to_vec(&upload).map_err(std::io::Error::other)?)
    };
    Ok(Some(Upload {
        body,
        end: batch.end,
    }))
}

/// Uploads the spooled decisions to the server's decision log, in batches, as long as the
/// sidecar runs: at once while a full batch waits, otherwise each second, backing off up to
/// `every` while the server cannot be reached. The spool is synced to disk before each look.
async fn upload_decisions(
    spool: Arc<Spool>,
    server: String,
    ca_pem: String,
    identities: watch::Receiver<Option<Enrolled>>,
    every: Duration,
) {
    const IDLE: Duration = Duration::from_secs(1);
    let api = HttpApi::new(&server);
    if let Err(e) = api.trust_root(&ca_pem) {
        tracing::error!(error = %e, "decisions cannot be uploaded: the pinned root does not load");
        return;
    }
    let mut pause = IDLE;
    let mut backoff = IDLE;
    loop {
        tokio::time::sleep(pause).await;
        pause = IDLE;
        // The disk sync, reading the batch and encoding its body run on the blocking pool:
        // the runtime's one thread goes on handling messages meanwhile (done on it, a batch
        // of 500 held every message for milliseconds once a second).
        let reading = Arc::clone(&spool);
        let batch = match tokio::task::spawn_blocking(move || next_upload(&reading)).await {
            Ok(Ok(Some(batch))) => batch,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the decision spool");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the decision spool did not finish");
                continue;
            }
        };
        let Some(enrolled) = identities.borrow().clone() else {
            continue;
        };
        let identity = crate::lifecycle::ClientIdentity::from(&enrolled);
        let answer = match batch.body {
            None => Ok(None), // only damaged lines: nothing to send, move past them
            Some(body) => api.upload_decisions(&identity, body).await.map(Some),
        };
        match answer {
            Ok(outcome) => {
                if let Some(o) = outcome {
                    tracing::info!(
                        recorded = o.recorded,
                        already = o.already_recorded,
                        "decisions uploaded"
                    );
                }
                let confirming = Arc::clone(&spool);
                let end = batch.end;
                match tokio::task::spawn_blocking(move || confirming.uploaded(end)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot move the decision spool's cursor (the batch will be sent again)");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "moving the decision spool's cursor did not finish (the batch will be sent again)");
                    }
                }
                backoff = IDLE;
                // At once while a full batch waits (a backlog); otherwise in a second, with
                // what gathered meanwhile. (Going on at once while anything waited kept a
                // busy sidecar uploading a few decisions at a time, each upload with its
                // sync, many times a second.)
                if spool.depth() >= vouch_proto::policy::MAX_UPLOADED_DECISIONS {
                    pause = Duration::ZERO;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, waiting = spool.depth(), retry_in = ?backoff, "cannot upload decisions");
                pause = backoff;
                backoff = (backoff * 2).min(every.max(IDLE));
            }
        }
    }
}

/// Runs the sidecar beside the identity lifecycle: waits for the first identity in
/// `identities`, then serves until the process ends, following renewals.
pub async fn run(
    settings: &Settings,
    state: StateDir,
    mut identities: watch::Receiver<Option<Enrolled>>,
) -> Result<(), AgentError> {
    let enrolled = loop {
        if let Some(enrolled) = identities.borrow_and_update().clone() {
            break enrolled;
        }
        if identities.changed().await.is_err() {
            return std::future::pending().await;
        }
    };
    let Some(creds) = credentials(&enrolled) else {
        tracing::warn!("the server issued no key-agreement certificate: messaging is off (a newer server issues one at the next renewal)");
        return std::future::pending().await;
    };
    let sidecar = &settings.sidecar;
    let api = HttpApi::new(&settings.server);
    api.trust_root(&enrolled.ca_pem)
        .map_err(|e| sidecar_error("pinned root")(e.to_string()))?;
    let anchors = anchors(&enrolled).map_err(sidecar_error("trust anchors"))?;
    let replay =
        ReplayGuard::load(state.file(REPLAY_FILE)).map_err(sidecar_error("replay windows"))?;
    let policy = Arc::new(BundlePolicy::default());
    let decisions = Arc::new(
        Spool::open(
            &state,
            sidecar.spool_max.unwrap_or(spool::DEFAULT_MAX_SPOOLED),
            sidecar.when_spool_full,
        )
        .map_err(|e| sidecar_error("decision spool")(e.to_string()))?,
    );
    let messenger_api = HttpApi::new(&settings.server);
    messenger_api
        .trust_root(&enrolled.ca_pem)
        .map_err(|e| sidecar_error("pinned root")(e.to_string()))?;
    let max_crl_age = sidecar
        .max_crl_age
        .unwrap_or(super::node::DEFAULT_MAX_CRL_AGE);
    let messenger = Arc::new(
        Messenger::new(messenger_api, anchors, &creds, replay, policy.clone())
            .map_err(|e| sidecar_error("credentials")(e.to_string()))?
            .with_max_crl_age(max_crl_age)
            .with_max_policy_age(
                sidecar
                    .max_policy_age
                    .unwrap_or(super::node::DEFAULT_MAX_POLICY_AGE),
            )
            .with_cache(state.clone())
            .with_spool(Arc::clone(&decisions)),
    );
    load_saved_policy(
        &messenger,
        &state,
        &policy,
        &enrolled,
        messenger.trust_domain(),
    );
    refresh(&messenger, &api, &policy, &enrolled, &state).await;

    let socket = sidecar
        .socket
        .clone()
        .unwrap_or_else(|| state.file(SOCKET_FILE));
    let listener =
        workload::bind(&socket).map_err(|e| sidecar_error("workload socket")(e.to_string()))?;
    tracing::info!(socket = %socket.display(), "workload API listening (workloads find it in VOUCH_AGENT_SOCKET)");
    tokio::spawn(workload::serve(listener, Arc::clone(&messenger)));
    if let Some(port) = sidecar.workload_port {
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| sidecar_error("workload port")(e.to_string()))?;
        tracing::info!(addr = ?tcp.local_addr().ok(), "workload API on loopback (X-Vouch-Workload header required)");
        tokio::spawn(workload::serve_loopback(tcp, Arc::clone(&messenger)));
    }
    let current = CurrentCertificate::new(&enrolled.cert_pem, &enrolled.key_pem)
        .map_err(|e| sidecar_error("delivery certificate")(e.to_string()))?;
    if let Some(addr) = sidecar.listen {
        let root = crate::credentials::certificates(&enrolled.ca_pem)
            .into_iter()
            .next()
            .unwrap_or_default();
        let tls = deliver::server_config_with(Arc::clone(&current), &root)
            .map_err(|e| sidecar_error("delivery TLS")(e.to_string()))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| sidecar_error("delivery listener")(e.to_string()))?;
        tracing::info!(addr = ?tcp.local_addr().ok(), "taking direct deliveries (mutual TLS)");
        let router = deliver::router_with(
            messenger.inbound(),
            Some(messenger.relay()),
            super::receive::Limits::default().max_len,
        );
        tokio::spawn(deliver::serve_tracked(
            tcp,
            tls,
            router,
            messenger.live_connections(),
            std::future::pending(),
        ));
    }
    // New CRLs and policy bundles as soon as the server has them (long-polls), beside the
    // periodic refresh.
    let following = Arc::clone(&messenger);
    tokio::spawn(async move { following.follow_crl().await });
    // Receipted messages reach the disk within a second (see `KeptInbox`).
    let syncing = Arc::clone(&messenger);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // On the blocking pool: receipts go on being appended while the disk catches up.
            let messenger = Arc::clone(&syncing);
            let _ = tokio::task::spawn_blocking(move || messenger.sync_inbox()).await;
        }
    });
    tokio::spawn(follow_policy(
        Arc::clone(&messenger),
        Arc::clone(&policy),
        state.clone(),
        settings.server.clone(),
        identities.clone(),
    ));
    if let Some(url) = &sidecar.mqtt {
        let (broker, eventloop) = mqtt::connect(url, &messenger).map_err(sidecar_error("mqtt"))?;
        messenger.set_broker(broker.clone());
        tokio::spawn(mqtt::run(broker, eventloop, Arc::clone(&messenger)));
    }

    let every = sidecar.refresh.unwrap_or(DEFAULT_REFRESH);
    tokio::spawn(upload_decisions(
        decisions,
        settings.server.clone(),
        enrolled.ca_pem.clone(),
        identities.clone(),
        every,
    ));
    let mut enrolled = enrolled;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {
                refresh(&messenger, &api, &policy, &enrolled, &state).await;
                messenger.save_peers();
            }
            changed = identities.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                let Some(renewed) = identities.borrow_and_update().clone() else { continue };
                enrolled = renewed;
                match credentials(&enrolled) {
                    Some(creds) => {
                        if let Err(e) = messenger.renewed(&creds) {
                            tracing::error!(error = %e, "the renewed credentials do not load; messaging keeps the old ones");
                        } else if let Err(e) = current.replace(&enrolled.cert_pem, &enrolled.key_pem) {
                            tracing::error!(error = %e, "the delivery listener keeps the old certificate");
                        } else {
                            tracing::info!(not_after = %enrolled.identity.not_after, "messaging uses the renewed credentials");
                        }
                    }
                    None => tracing::warn!("the renewal brought no key-agreement certificate"),
                }
            }
        }
    }
}
