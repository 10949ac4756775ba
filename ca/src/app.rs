//! Assembling a server from a data directory and a configuration: CA initialisation and
//! import, loading, minting operator tokens, and starting the listener.

use crate::api::{self, AppInner, AppState, Settings};
use crate::authz::signed::BundleSigning;
use crate::authz::PolicyService;
use crate::clock::SharedClock;
use crate::datadir::{DataDir, DataDirError, DataFile};
use crate::ids::{system_rng, TrustDomain};
use crate::metrics::Metrics;
use crate::nonce::NonceKey;
use crate::pki::authority::{self, Authority, CaFiles};
use crate::pki::PkiError;
use crate::server::{self, TlsSetupError};
use crate::store::{Registry, StoreError};
use crate::tickets::{TicketKeys, TicketSecret};
use crate::tokens::{random_jti, OperatorClaims, Role, TokenKey, ISSUER, OPERATOR_AUDIENCE};
use std::net::SocketAddr;
use std::path::Path;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Errors assembling or starting the server.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Data directory problem.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// CA material problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Registry problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS setup problem.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The data directory is not initialised.
    #[error("data directory `{0}` holds no CA; run `vouch ca init` first (or start `vouch serve` with `--trust-domain`)")]
    NotInitialised(String),
    /// The data directory is already initialised.
    #[error("data directory `{0}` already holds a CA")]
    AlreadyInitialised(String),
    /// A file holds something unusable.
    #[error("`{0}` is not valid: {1}")]
    Invalid(String, String),
    /// Binding the listener failed.
    #[error("cannot listen on `{0}`: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// A policy directory does not load.
    #[error("policy directory `{dir}` does not load:\n  {}", .problems.join("\n  "))]
    Policy {
        /// The directory.
        dir: String,
        /// Every problem.
        problems: Vec<String>,
    },
}

/// Whether `data_dir` holds a CA.
pub fn is_initialised(data_dir: &DataDir) -> bool {
    data_dir.exists(DataFile::IssuingCert)
}

/// Creates a new root and issuing CA and the token keys in `data_dir`.
pub fn init_ca(
    data_dir: &DataDir,
    trust_domain: &TrustDomain,
    now: time::OffsetDateTime,
) -> Result<(), AppError> {
    let files = authority::generate(trust_domain.as_str(), now)?;
    write_ca(data_dir, trust_domain, &files)
}

/// Like [`init_ca`], but the root CA's private key is written to `root_key_out` (mode 0600,
/// never overwriting), outside the data directory, and not into it: an offline root. The
/// server never needs it; it signs a new issuing CA (see the README's root key ceremony).
pub fn init_ca_with_offline_root(
    data_dir: &DataDir,
    trust_domain: &TrustDomain,
    now: time::OffsetDateTime,
    root_key_out: &Path,
) -> Result<(), AppError> {
    data_dir.create()?;
    if is_initialised(data_dir) {
        return Err(AppError::AlreadyInitialised(
            data_dir.path().display().to_string(),
        ));
    }
    let parent = match root_key_out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let inside = match (parent.canonicalize(), data_dir.path().canonicalize()) {
        (Ok(parent), Ok(data)) => parent.starts_with(data),
        (Err(e), _) | (_, Err(e)) => {
            return Err(AppError::Invalid(
                root_key_out.display().to_string(),
                format!("its directory cannot be used: {e}"),
            ))
        }
    };
    if inside {
        return Err(AppError::Invalid(
            root_key_out.display().to_string(),
            "an offline root key must be kept outside the data directory".into(),
        ));
    }
    let mut files = authority::generate(trust_domain.as_str(), now)?;
    let root_key = files.root_key_pem.take().unwrap_or_default();
    crate::datadir::write_new_secret(root_key_out, root_key.as_bytes())?;
    write_ca(data_dir, trust_domain, &files).inspect_err(|_| {
        // The key of a CA that was not written is of no use to anyone.
        let _ = std::fs::remove_file(root_key_out);
    })
}

/// Imports an existing root certificate and issuing CA certificate and key into `data_dir`
/// (the root key stays wherever it is kept), and makes new token keys.
pub fn import_ca(
    data_dir: &DataDir,
    trust_domain: &TrustDomain,
    files: &CaFiles,
) -> Result<(), AppError> {
    Authority::load(files)?;
    write_ca(data_dir, trust_domain, files)
}

fn write_ca(
    data_dir: &DataDir,
    trust_domain: &TrustDomain,
    files: &CaFiles,
) -> Result<(), AppError> {
    data_dir.create()?;
    if is_initialised(data_dir) {
        return Err(AppError::AlreadyInitialised(
            data_dir.path().display().to_string(),
        ));
    }
    let rng = system_rng();
    let (_, bootstrap_text) = TokenKey::generate(&rng).map_err(|_| AppError::Random)?;
    let (_, operator_text) = TokenKey::generate(&rng).map_err(|_| AppError::Random)?;
    data_dir.write_secret(DataFile::BootstrapTokenKey, bootstrap_text.as_bytes())?;
    data_dir.write_secret(DataFile::OperatorTokenKey, operator_text.as_bytes())?;
    if let Some(root_key) = &files.root_key_pem {
        data_dir.write_secret(DataFile::RootKey, root_key.as_bytes())?;
    }
    data_dir.write_secret(DataFile::IssuingKey, files.issuing_key_pem.as_bytes())?;
    data_dir.write_public(DataFile::RootCert, files.root_cert_pem.as_bytes())?;
    data_dir.write_public(DataFile::TrustDomain, trust_domain.as_str().as_bytes())?;
    // Written last: its presence marks the directory as initialised.
    data_dir.write_public(DataFile::IssuingCert, files.issuing_cert_pem.as_bytes())?;
    Ok(())
}

/// What a running server loads from its data directory.
pub struct Loaded {
    /// The issuing CA.
    pub ca: Authority,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Bootstrap token key.
    pub bootstrap_key: TokenKey,
    /// Operator token key.
    pub operator_key: TokenKey,
    /// Attestation nonce key.
    pub nonce_key: NonceKey,
    /// What TLS session tickets are keyed from (`crate::tickets`).
    pub ticket_secret: TicketSecret,
}

fn text(data_dir: &DataDir, file: DataFile, secret: bool) -> Result<String, AppError> {
    let bytes = if secret {
        data_dir.read_secret(file)?
    } else {
        data_dir.read_public(file)?
    };
    String::from_utf8(bytes).map_err(|_| {
        AppError::Invalid(
            data_dir.file(file).display().to_string(),
            "not UTF-8 text".into(),
        )
    })
}

/// The 32 bytes of a token key file in `data_dir`.
fn token_key_bytes(data_dir: &DataDir, file: DataFile) -> Result<[u8; 32], AppError> {
    crate::tokens::key_bytes_from_file_text(&data_dir.read_secret(file)?).ok_or_else(|| {
        AppError::Invalid(
            data_dir.file(file).display().to_string(),
            "expected 32 bytes of base64".into(),
        )
    })
}

fn token_key(data_dir: &DataDir, file: DataFile) -> Result<TokenKey, AppError> {
    Ok(TokenKey::from_bytes(&token_key_bytes(data_dir, file)?))
}

/// Loads the CA, trust domain and token keys from `data_dir`.
pub fn load(data_dir: &DataDir) -> Result<Loaded, AppError> {
    if !is_initialised(data_dir) {
        return Err(AppError::NotInitialised(
            data_dir.path().display().to_string(),
        ));
    }
    let files = CaFiles {
        root_cert_pem: text(data_dir, DataFile::RootCert, false)?,
        root_key_pem: None,
        issuing_cert_pem: text(data_dir, DataFile::IssuingCert, false)?,
        issuing_key_pem: text(data_dir, DataFile::IssuingKey, true)?,
    };
    let td_text = text(data_dir, DataFile::TrustDomain, false)?;
    let trust_domain = TrustDomain::parse(td_text.trim()).map_err(|e| {
        AppError::Invalid(
            data_dir.file(DataFile::TrustDomain).display().to_string(),
            e.to_string(),
        )
    })?;
    // The bootstrap-token key also keys attestation nonces, by derivation (`crate::nonce`).
    let bootstrap = token_key_bytes(data_dir, DataFile::BootstrapTokenKey)?;
    let nonce_key = NonceKey::derive(&bootstrap).map_err(|_| {
        AppError::Invalid(
            data_dir
                .file(DataFile::BootstrapTokenKey)
                .display()
                .to_string(),
            "cannot derive the attestation nonce key".into(),
        )
    })?;
    Ok(Loaded {
        ca: Authority::load(&files)?,
        trust_domain,
        bootstrap_key: TokenKey::from_bytes(&bootstrap),
        operator_key: token_key(data_dir, DataFile::OperatorTokenKey)?,
        nonce_key,
        // Like the nonce key, derived from the bootstrap-token key (`crate::tickets`).
        ticket_secret: TicketSecret::derive(&bootstrap),
    })
}

/// Mints an operator token from the data directory's operator key.
pub fn mint_operator_token(
    data_dir: &DataDir,
    role: Role,
    subject: &str,
    ttl_secs: i64,
    now: i64,
) -> Result<String, AppError> {
    mint_operator_token_with_id(data_dir, role, subject, ttl_secs, now).map(|(token, _)| token)
}

/// Mints an operator token; returns it with its id (`jti`, what revoking it names).
pub fn mint_operator_token_with_id(
    data_dir: &DataDir,
    role: Role,
    subject: &str,
    ttl_secs: i64,
    now: i64,
) -> Result<(String, String), AppError> {
    if !(1..=crate::tokens::MAX_OPERATOR_TOKEN_TTL_SECS).contains(&ttl_secs) {
        return Err(AppError::Invalid(
            "operator token".into(),
            format!(
                "a lifetime of 1 s to {} days is needed",
                crate::tokens::MAX_OPERATOR_TOKEN_TTL_SECS / 86_400
            ),
        ));
    }
    let key = token_key(data_dir, DataFile::OperatorTokenKey)?;
    let claims = OperatorClaims {
        iss: ISSUER.into(),
        aud: OPERATOR_AUDIENCE.into(),
        sub: subject.to_owned(),
        role,
        iat: now,
        exp: now.saturating_add(ttl_secs),
        jti: random_jti(&system_rng()).map_err(|_| AppError::Random)?,
    };
    let token = key
        .sign(&claims)
        .map_err(|e| AppError::Invalid("operator token".into(), e.to_string()))?;
    Ok((token, claims.jti))
}

/// Everything `vouch serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory.
    pub data_dir: DataDir,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL devices reach the server at (`--public-url`), without a trailing slash. Absent:
    /// `https://localhost:<the port actually bound>`. Certificates point to its `/v1/crl`.
    pub public_url: Option<String>,
    /// Database URL (default: SQLite in the data directory).
    pub database_url: String,
    /// DNS names / IPs for the server certificate.
    pub hostnames: Vec<String>,
    /// Database pool size.
    pub max_connections: u32,
    /// Handler settings.
    pub settings: Settings,
    /// Policy directories.
    pub policy: PolicyConfig,
    /// How often to try the stale sweep.
    pub sweep_every: std::time::Duration,
}

/// Where policies come from.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// The active policy directory (none: every decision denies).
    pub dir: Option<std::path::PathBuf>,
    /// The candidate directory for shadow mode.
    pub shadow_dir: Option<std::path::PathBuf>,
    /// How often to look for changes (none: no watcher).
    pub poll: Option<std::time::Duration>,
}

/// The default SQLite URL for a data directory.
pub fn default_database_url(data_dir: &DataDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.file(DataFile::Database).display()
    )
}

/// A server that is listening.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The server's state (tests read the registry through it).
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops (it runs until [`RunningServer::stop`] or a signal).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// The shutdown trigger, for a signal handler.
    pub fn take_shutdown(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

/// Re-reads the policy directories every `every` and swaps in what changed (a new commit
/// or edited files). A directory that fails to load is reported once per change, not on
/// every tick. Ends with the runtime.
async fn watch_policies(state: AppState, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(e) = crate::flows::reload::reload(&state, "policy-watcher", false).await {
            tracing::warn!(code = e.code.as_str(), detail = %e.detail, "policy watcher could not reload");
        }
    }
}

/// Tries the stale sweep every `every`; the database lets one replica sweep each period.
async fn sweep_stale_devices(state: AppState, every: std::time::Duration, replica: String) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        run_sweep(&state, &replica).await;
    }
}

/// One sweep attempt for the current period (also what tests call with an injected clock).
pub async fn run_sweep(state: &AppState, replica: &str) -> Option<crate::store::SweepOutcome> {
    crate::flows::attest::sweep_stale(state, replica).await
}

/// Loads everything, connects the registry, binds the listener and starts serving.
pub async fn start(config: &ServeConfig, clock: SharedClock) -> Result<RunningServer, AppError> {
    let loaded = load(&config.data_dir)?;
    let registry = Registry::connect(&config.database_url, config.max_connections).await?;
    let tickets = std::sync::Arc::new(TicketKeys::new(loaded.ticket_secret.clone(), clock.clone()));
    let tls = server::tls_config(&loaded.ca, &config.hostnames, clock.now(), tickets)?;
    let policy = PolicyService::load(
        config.policy.dir.as_deref(),
        config.policy.shadow_dir.as_deref(),
        clock.unix(),
    )
    .map_err(|(dir, problems)| AppError::Policy {
        dir: dir.display().to_string(),
        problems,
    })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| AppError::Bind(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AppError::Bind(config.listen, e))?;
    // The CRL's address goes into every certificate: with `--listen 127.0.0.1:0` it must name
    // the port the system chose, not 0.
    let mut settings = config.settings.clone();
    settings.crl_url = format!(
        "{}/v1/crl",
        config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("https://localhost:{}", addr.port()))
    );
    let state = AppState::new(AppInner {
        ca: loaded.ca,
        trust_domain: loaded.trust_domain,
        registry,
        clock,
        rng: system_rng(),
        bootstrap_key: loaded.bootstrap_key,
        operator_key: loaded.operator_key,
        nonce_key: loaded.nonce_key,
        settings,
        metrics: Metrics::new(),
        policy,
        tpm_identities: Default::default(),
        bundle_signing: BundleSigning::default(),
        decision_rate: crate::flows::rate::CallerBuckets::new(
            config.settings.decisions_per_second,
            config.settings.decision_burst,
        ),
        crl_feed: Default::default(),
    });
    // The set loaded at start is numbered now: activating it is what moves the sequence.
    if let Err(e) = crate::flows::reload::number_active_set(&state).await {
        tracing::warn!(code = e.code.as_str(), detail = %e.detail, "policy set not numbered yet; numbered at the first bundle request");
    }
    // New CRLs signed by other replicas reach this replica's long-polls at once.
    tokio::spawn(crate::flows::revoke::follow_other_replicas(state.clone()));
    if let (Some(every), true) = (config.policy.poll, state.policy.has_dirs()) {
        tokio::spawn(watch_policies(state.clone(), every));
    }
    let replica = random_jti(&system_rng()).map_err(|_| AppError::Random)?;
    tokio::spawn(sweep_stale_devices(
        state.clone(),
        config.sweep_every,
        replica,
    ));
    let (tx, rx) = oneshot::channel();
    let router = api::router(state.clone());
    let trust_domain = state.trust_domain.clone();
    let task = tokio::spawn(server::serve(
        listener,
        tls,
        trust_domain,
        router,
        server::ConnectionLimits {
            max_connections: state.settings.max_client_connections,
            handshake: state.settings.handshake_timeout,
            idle: state.settings.idle_timeout,
            request_body: state.settings.request_body_timeout,
        },
        state.metrics.handshakes.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Ok(RunningServer {
        addr,
        state,
        shutdown: Some(tx),
        task,
    })
}
